#include "vmm/control_server.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include <fmt/core.h>

#include "vmm/control_client.h"
#include "vmm/runtime.h"

namespace forkvmm {
namespace {

using nlohmann::json;

TEST(JsonObjectLength, CompleteObjects) {
  EXPECT_EQ(CompleteJsonObjectLength("{}"), 2u);
  EXPECT_EQ(CompleteJsonObjectLength("  {\"a\": [1, {\"b\": 2}]} trailing"), 22u);
  EXPECT_EQ(CompleteJsonObjectLength("{\"s\": \"} { \\\" }\"}"), 17u);
}

TEST(JsonObjectLength, IncompleteAndInvalid) {
  EXPECT_EQ(CompleteJsonObjectLength(""), 0u);
  EXPECT_EQ(CompleteJsonObjectLength("   \n"), 0u);
  EXPECT_EQ(CompleteJsonObjectLength("{\"execute\": \"st"), 0u);
  EXPECT_EQ(CompleteJsonObjectLength("hello"), std::string_view::npos);
  EXPECT_EQ(CompleteJsonObjectLength("[1]"), std::string_view::npos);
}

// Runs a ControlServer on its own event loop thread for one test.
class ControlServerTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(ControlServer::kNegotiationTimeout); }

  void Start(std::chrono::milliseconds negotiation_timeout) {
    char pattern[] = "/tmp/forkvmm-control-XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    directory_ = pattern;
    path_ = directory_ + "/control.sock";
    auto loop = EventLoop::Create();
    ASSERT_TRUE(loop.ok());
    loop_ = std::move(loop).value();
    std::vector<CommandSpec> commands = {
        {"echo", {{"x"}, {"after"}, {"pad"}, {"file", true}}},
        {"fail", {}},
    };
    auto server = ControlServer::Listen(
        path_, *loop_, commands,
        [](const std::string& command, const json& arguments) {
          if (command == "echo") return CommandReply::Success(arguments);
          return CommandReply::Failure("it failed");
        },
        negotiation_timeout);
    ASSERT_TRUE(server.ok()) << server.error().message();
    server_ = std::move(server).value();
    thread_ = std::thread([this] { ASSERT_TRUE(loop_->Run().ok()); });
  }

  void TearDown() override {
    loop_->Quit();
    thread_.join();
    server_.reset();
    std::filesystem::remove_all(directory_);
  }

  // A raw connection, for sending malformed input.
  int ConnectRaw() {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strcpy(address.sun_path, path_.c_str());
    EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    return fd;
  }

  static std::string ReadLine(int fd) {
    std::string line;
    char c;
    while (read(fd, &c, 1) == 1 && c != '\n') line += c;
    return line;
  }

  std::string directory_;
  std::string path_;
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<ControlServer> server_;
  std::thread thread_;
};

TEST_F(ControlServerTest, SocketIsOwnerOnly) {
  struct stat st {};
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(ControlServerTest, ClientRunsCommands) {
  auto client = ControlClient::Connect(path_);
  ASSERT_TRUE(client.ok()) << client.error().message();
  auto reply = client->Execute("echo", {{"x", 1}});
  ASSERT_TRUE(reply.ok());
  EXPECT_EQ((*reply)["x"], 1);
  auto failed = client->Execute("fail");
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.error().message(), "it failed");
}

TEST_F(ControlServerTest, CommandsNeedNegotiation) {
  int fd = ConnectRaw();
  json greeting = json::parse(ReadLine(fd));
  EXPECT_TRUE(greeting.contains("QMP"));
  std::string request = "{\"execute\": \"echo\", \"id\": 7}\n";
  ASSERT_EQ(write(fd, request.data(), request.size()), static_cast<ssize_t>(request.size()));
  json reply = json::parse(ReadLine(fd));
  EXPECT_EQ(reply["error"]["class"], "CommandNotFound");
  EXPECT_EQ(reply["id"], 7);
  close(fd);
}

TEST_F(ControlServerTest, MalformedInputGetsErrorsAndConnectionSurvives) {
  int fd = ConnectRaw();
  ReadLine(fd);  // greeting
  std::string junk = "not json\n{\"execute\": 5}\n{\"execute\": \"qmp_capabilities\"}";
  ASSERT_EQ(write(fd, junk.data(), junk.size()), static_cast<ssize_t>(junk.size()));
  EXPECT_EQ(json::parse(ReadLine(fd))["error"]["desc"], "JSON parse error: expected an object");
  EXPECT_EQ(json::parse(ReadLine(fd))["error"]["desc"], "request has no 'execute' string");
  EXPECT_TRUE(json::parse(ReadLine(fd)).contains("return"));
  close(fd);
}

TEST_F(ControlServerTest, OversizedRequestIsRejected) {
  int fd = ConnectRaw();
  ReadLine(fd);
  std::string huge = "{\"execute\": \"echo\", \"arguments\": {\"pad\": \"" +
                     std::string(ControlServer::kMaxRequestBytes + 10, 'a');
  ASSERT_EQ(write(fd, huge.data(), huge.size()), static_cast<ssize_t>(huge.size()));
  json reply = json::parse(ReadLine(fd));
  EXPECT_EQ(reply["error"]["desc"], "request exceeds 65536 bytes");
  close(fd);
  // The server still serves new clients.
  auto client = ControlClient::Connect(path_);
  ASSERT_TRUE(client.ok());
  EXPECT_TRUE(client->Execute("echo").ok());
}

TEST_F(ControlServerTest, EventsReachNegotiatedClients) {
  auto client = ControlClient::Connect(path_);
  ASSERT_TRUE(client.ok());
  loop_->Post([this] { server_->Broadcast("STOP"); });
  // Execute skips events that arrive before its reply.
  auto reply = client->Execute("echo", {{"after", "event"}});
  ASSERT_TRUE(reply.ok());
  EXPECT_EQ((*reply)["after"], "event");
}

// Sends one request on a raw, negotiated connection and returns the reply.
json RawRequest(int fd, const std::string& request) {
  std::string text = request + "\n";
  EXPECT_EQ(write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
  std::string line;
  char c;
  while (read(fd, &c, 1) == 1 && c != '\n') line += c;
  return json::parse(line, nullptr, false);
}

TEST_F(ControlServerTest, UnknownArgumentIsRejected) {
  auto client = ControlClient::Connect(path_);
  ASSERT_TRUE(client.ok()) << client.error().message();
  auto fail = client->Execute("fail", {{"verbose", true}});
  ASSERT_FALSE(fail.ok());
  EXPECT_EQ(fail.error().message(),
            "unexpected argument 'verbose' for fail, which takes no arguments");
  auto echo = client->Execute("echo", {{"y", 1}});
  ASSERT_FALSE(echo.ok());
  EXPECT_EQ(echo.error().message(),
            "unexpected argument 'y' for echo, which takes x, after, pad and file");
  EXPECT_TRUE(client->Execute("echo", {{"x", 1}}).ok());
}

TEST_F(ControlServerTest, UnknownCommandIsNotFound) {
  int fd = ConnectRaw();
  ReadLine(fd);
  EXPECT_TRUE(RawRequest(fd, R"({"execute": "qmp_capabilities"})").contains("return"));
  json reply = RawRequest(fd, R"({"execute": "reboot"})");
  EXPECT_EQ(reply["error"]["class"], "CommandNotFound");
  EXPECT_EQ(reply["error"]["desc"], "the command reboot has not been found");
  close(fd);
}

TEST_F(ControlServerTest, CapabilitiesRejectArguments) {
  int fd = ConnectRaw();
  ReadLine(fd);
  json reply = RawRequest(fd, R"({"execute": "qmp_capabilities", "arguments": {"x": 1}})");
  EXPECT_EQ(reply["error"]["desc"],
            "unexpected argument 'x' for qmp_capabilities, which takes no arguments");
  close(fd);
}

TEST_F(ControlServerTest, RelativePathIsRejected) {
  auto client = ControlClient::Connect(path_);
  ASSERT_TRUE(client.ok()) << client.error().message();
  for (const char* path : {"../../x", "x.log", ""}) {
    SCOPED_TRACE(path);
    auto reply = client->Execute("echo", {{"file", path}});
    ASSERT_FALSE(reply.ok());
    EXPECT_EQ(reply.error().message(), fmt::format("invalid echo argument file \"{}\": expected "
                                                   "an absolute path",
                                                   path));
  }
  EXPECT_TRUE(client->Execute("echo", {{"file", "/tmp/x.log"}}).ok());
  // The handler checks the type.
  EXPECT_TRUE(client->Execute("echo", {{"file", 5}}).ok());
}

TEST_F(ControlServerTest, ClientBeyondLimitGetsReason) {
  std::vector<int> fds;
  for (size_t i = 0; i < ControlServer::kMaxClients; ++i) {
    fds.push_back(ConnectRaw());
    ASSERT_TRUE(json::parse(ReadLine(fds.back())).contains("QMP"));
  }
  auto rejected = ControlClient::Connect(path_);
  ASSERT_FALSE(rejected.ok());
  EXPECT_EQ(rejected.error().message(),
            path_ + ": too many connections: the VM serves at most 64 control clients, try "
                    "again later");
  close(fds.back());
  fds.pop_back();
  // The server notices the closed connection before it accepts the next.
  bool connected = false;
  for (int attempt = 0; attempt < 100 && !connected; ++attempt) {
    connected = ControlClient::Connect(path_).ok();
    if (!connected) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(connected);
  for (int fd : fds) close(fd);
}

class ControlServerTimeoutTest : public ControlServerTest {
 protected:
  void SetUp() override { Start(std::chrono::milliseconds(300)); }
};

TEST_F(ControlServerTimeoutTest, UnnegotiatedClientIsDisconnected) {
  int idle = ConnectRaw();
  ReadLine(idle);
  auto negotiated = ControlClient::Connect(path_);
  ASSERT_TRUE(negotiated.ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  json reply = json::parse(ReadLine(idle), nullptr, false);
  EXPECT_EQ(reply["error"]["desc"], "timed out after 300 ms waiting for qmp_capabilities");
  char c;
  EXPECT_EQ(read(idle, &c, 1), 0) << "the connection must be closed";
  close(idle);
  EXPECT_TRUE(negotiated->Execute("echo").ok()) << "a negotiated client stays connected";
}

TEST(RuntimeDirectory, RegistersFindsAndCleansUp) {
  char pattern[] = "/tmp/forkvmm-runtime-XXXXXX";
  ASSERT_NE(mkdtemp(pattern), nullptr);
  auto runtime = RuntimeDirectory::Open(pattern);
  ASSERT_TRUE(runtime.ok());
  VmRecord live{runtime->NewId(), "alive", "", getpid(), 1 << 20, 1, 1, {}};
  ASSERT_TRUE(runtime->CreateVm(live).ok());
  // A record whose process is gone is stale.
  pid_t dead = fork();
  if (dead == 0) _exit(0);
  waitpid(dead, nullptr, 0);
  VmRecord stale{runtime->NewId(), "gone", "", dead, 1 << 20, 1, 2, {}};
  ASSERT_TRUE(runtime->CreateVm(stale).ok());

  auto list = runtime->List();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].id, live.id);
  EXPECT_FALSE(std::filesystem::exists(runtime->VmDirectory(stale.id)));

  EXPECT_EQ(runtime->Find("alive")->id, live.id);
  EXPECT_EQ(runtime->Find(live.id.substr(0, 4))->id, live.id);
  auto missing = runtime->Find("nothing");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().message(),
            std::string("no VM with id or name 'nothing' in ") + pattern);
  VmRecord duplicate{runtime->NewId(), "alive", "", getpid(), 1 << 20, 1, 3, {}};
  auto status = runtime->CreateVm(duplicate);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().message(),
            "a VM named 'alive' already exists (id " + live.id + ")");
  std::filesystem::remove_all(pattern);
}

TEST(RuntimeDirectory, FailedVmKeepsItsLog) {
  char pattern[] = "/tmp/forkvmm-runtime-XXXXXX";
  ASSERT_NE(mkdtemp(pattern), nullptr);
  auto runtime = RuntimeDirectory::Open(pattern);
  ASSERT_TRUE(runtime.ok());
  VmRecord record{runtime->NewId(), "broken", "", getpid(), 1 << 20, 1, 1, {}};
  ASSERT_TRUE(runtime->CreateVm(record).ok());
  {
    std::ofstream log(runtime->VmDirectory(record.id) + "/vmm.log");
    log << "vCPU 0: KVM internal error\n";
  }

  runtime->RemoveFailedVm(record.id);
  EXPECT_FALSE(std::filesystem::exists(runtime->VmDirectory(record.id)));
  std::ifstream kept(runtime->FailedLogPath(record.id));
  std::string line;
  ASSERT_TRUE(std::getline(kept, line));
  EXPECT_EQ(line, "vCPU 0: KVM internal error");
  auto found = runtime->Find(record.id);
  ASSERT_FALSE(found.ok());
  EXPECT_NE(found.error().message().find("it ended with an error, see " +
                                         runtime->FailedLogPath(record.id)),
            std::string::npos)
      << found.error().message();
  std::filesystem::remove_all(pattern);
}

TEST(RuntimeDirectory, UnwritableRootIsReported) {
  auto runtime = RuntimeDirectory::Open("/proc/forkvmm-cannot-exist");
  ASSERT_FALSE(runtime.ok());
  EXPECT_NE(runtime.error().message().find("/proc/forkvmm-cannot-exist"), std::string::npos);
}

}  // namespace
}  // namespace forkvmm
