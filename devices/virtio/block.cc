#include "devices/virtio/block.h"

#include <linux/virtio_ids.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <system_error>

namespace forkvmm::devices::virtio {
namespace {

// epoll tags. Queue notifications use the queue index as their tag.
constexpr uint64_t kControlTag = ~uint64_t{0};
constexpr uint64_t kCompletionTag = ~uint64_t{0} - 1;
constexpr int kMaxEventsPerWait = 8;

constexpr uint64_t Bit(unsigned bit) {
  return uint64_t{1} << bit;
}

Status AddToEpoll(int epoll_fd, int fd, uint64_t tag) {
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.u64 = tag;
  if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &event) < 0) {
    return Error::FromErrno("epoll_ctl", fmt::format("fd {}", fd));
  }
  return Ok();
}

// Resets an eventfd's counter. EAGAIN (already zero) is fine.
void ClearEventfd(int fd) {
  uint64_t count = 0;
  ssize_t unused = ::read(fd, &count, sizeof(count));
  (void)unused;
}

uint64_t OfferedFeatures(bool read_only) {
  uint64_t features = kVirtqueueFeatures | Bit(VIRTIO_BLK_F_SEG_MAX) | Bit(VIRTIO_BLK_F_BLK_SIZE) |
                      Bit(VIRTIO_BLK_F_FLUSH);
  if (read_only) return features | Bit(VIRTIO_BLK_F_RO);
  return features | Bit(VIRTIO_BLK_F_DISCARD) | Bit(VIRTIO_BLK_F_WRITE_ZEROES);
}

}  // namespace

// A request handed to the backend, possibly as several operations
// (one per discard or write-zeroes segment).
struct VirtioBlock::InFlight {
  size_t queue = 0;
  uint16_t head = 0;
  std::optional<uint64_t> status_address;
  uint32_t used_length_ok = 0;
  uint32_t used_length_error = 0;
  size_t remaining = 0;
  bool failed = false;
};

Result<std::shared_ptr<VirtioBlock>> VirtioBlock::Create(
    std::unique_ptr<block::BlockBackend> backend, BlockDeviceOptions options) {
  if (!backend) return Error("virtio-blk: no backend");
  if (options.id.size() > kBlockIdBytes) {
    return Error(fmt::format("virtio-blk {}: ID '{}' is longer than {} bytes", backend->path(),
                             options.id, kBlockIdBytes));
  }
  if (options.queue_size < 2 || options.queue_size > kMaxQueueSize ||
      !std::has_single_bit(options.queue_size)) {
    return Error(
        fmt::format("virtio-blk {}: invalid queue size {}: expected a power of two "
                    "from 2 to {}",
                    backend->path(), options.queue_size, kMaxQueueSize));
  }
  return std::shared_ptr<VirtioBlock>(new VirtioBlock(std::move(backend), options));
}

VirtioBlock::VirtioBlock(std::unique_ptr<block::BlockBackend> backend,
                         const BlockDeviceOptions& options)
    : backend_(std::move(backend)),
      name_(backend_->path()),
      disk_bytes_(backend_->size()),
      read_only_(backend_->read_only()),
      max_queue_size_(options.queue_size),
      features_(OfferedFeatures(read_only_)) {
  // virtio 1.2 §5.2.4. Fields of features not offered stay zero.
  config_.capacity = disk_bytes_ / kSectorSize;
  // A request uses one descriptor for its header and one for its status.
  config_.seg_max = max_queue_size_ - 2u;
  config_.blk_size = kSectorSize;
  if (!read_only_) {
    config_.max_discard_sectors = kMaxDiscardSectors;
    config_.max_discard_seg = kMaxDiscardSegments;
    config_.discard_sector_alignment = options.discard_alignment_sectors;
    config_.max_write_zeroes_sectors = kMaxWriteZeroesSectors;
    config_.max_write_zeroes_seg = kMaxWriteZeroesSegments;
    // NOTE: 0 because the backends do not report whether WriteZeroes
    // deallocates. A request's UNMAP flag is accepted and carried out as a
    // plain write-zeroes.
    config_.write_zeroes_may_unmap = 0;
  }
  std::copy(options.id.begin(), options.id.end(), id_.begin());
}

VirtioBlock::~VirtioBlock() {
  if (lifecycle_ != DeviceLifecycle::kAbandoned) {
    Reset();
    return;
  }
  // NOTE: A writable backend flushes when destroyed, which in a fork child
  // would write to the parent's image. BlockBackend cannot close without
  // flushing, so an abandoned writable backend is leaked. Fork reopens the
  // top layer read-only before fork(), so this only happens when that step
  // was skipped.
  if (backend_ && !backend_->read_only()) {
    LOG_WARNING("virtio-blk {}: leaking the writable backend inherited from the parent", name_);
    (void)backend_.release();
  }
}

uint32_t VirtioBlock::device_type() const {
  return VIRTIO_ID_BLOCK;
}

uint16_t VirtioBlock::max_queue_size(size_t queue) const {
  return queue == 0 ? max_queue_size_ : 0;
}

void VirtioBlock::ReadConfig(uint64_t offset, std::span<uint8_t> data) const {
  std::fill(data.begin(), data.end(), 0);
  if (offset >= sizeof(config_)) return;
  const size_t length = std::min<uint64_t>(data.size(), sizeof(config_) - offset);
  std::memcpy(data.data(), reinterpret_cast<const uint8_t*>(&config_) + offset, length);
}

void VirtioBlock::WriteConfig(uint64_t offset, std::span<const uint8_t> data) {
  LogLimited(log_limiter_, LogLevel::kWarning,
             "virtio-blk {}: ignored {}-byte write to read-only config offset {:#x}", name_,
             data.size(), offset);
}

Status VirtioBlock::Activate(DeviceActivation activation) {
  const auto context = fmt::format("virtio-blk {}", name_);
  if (lifecycle_ != DeviceLifecycle::kInactive) {
    return Error(fmt::format("{}: cannot activate a device that is {}", context,
                             DeviceLifecycleName(lifecycle_)));
  }
  if (!backend_) return Error(fmt::format("{}: no backend", context));
  if (activation.memory == nullptr || !activation.interrupt || activation.queues.size() != 1 ||
      activation.notify_fds.size() != 1) {
    return Error(
        fmt::format("{}: activation needs memory, an interrupt, one queue and its "
                    "notifier",
                    context));
  }
  if ((activation.driver_features & ~features_) != 0) {
    return Error(fmt::format("{}: driver features {:#x} were not offered", context,
                             activation.driver_features));
  }
  ASSIGN_OR_RETURN_CTX(Virtqueue queue,
                       Virtqueue::Create(*activation.memory, activation.queues[0], max_queue_size_,
                                         activation.driver_features),
                       context + ": request queue");

  memory_ = activation.memory;
  driver_features_ = activation.driver_features;
  queues_.clear();
  queues_.push_back(std::move(queue));
  notify_fds_ = std::move(activation.notify_fds);
  interrupt_ = std::move(activation.interrupt);
  limits_ = {.capacity_sectors = disk_bytes_ / kSectorSize,
             .read_only = read_only_,
             .discard = (driver_features_ & Bit(VIRTIO_BLK_F_DISCARD)) != 0,
             .write_zeroes = (driver_features_ & Bit(VIRTIO_BLK_F_WRITE_ZEROES)) != 0,
             .max_discard_sectors = kMaxDiscardSectors,
             .max_discard_segments = kMaxDiscardSegments,
             .max_write_zeroes_sectors = kMaxWriteZeroesSectors,
             .max_write_zeroes_segments = kMaxWriteZeroesSegments};
  in_flight_.assign(queues_.size(), 0);
  pushed_.assign(queues_.size(), false);

  Status started = StartWorker();
  if (!started.ok()) {
    queues_.clear();
    notify_fds_.clear();
    interrupt_.reset();
    return std::move(started).error().WithContext(context);
  }
  lifecycle_ = DeviceLifecycle::kRunning;
  return Ok();
}

Status VirtioBlock::StartWorker() {
  ASSIGN_OR_RETURN(int completion_fd, backend_->StartAsync());
  UniqueFd epoll_fd(epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_fd.valid()) return Error::FromErrno("epoll_create1");
  UniqueFd control_fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!control_fd.valid()) return Error::FromErrno("eventfd", "worker control");
  TRY(AddToEpoll(epoll_fd.get(), control_fd.get(), kControlTag));
  TRY(AddToEpoll(epoll_fd.get(), completion_fd, kCompletionTag));
  for (size_t queue = 0; queue < notify_fds_.size(); ++queue) {
    TRY(AddToEpoll(epoll_fd.get(), notify_fds_[queue], queue));
  }
  epoll_fd_ = std::move(epoll_fd);
  control_fd_ = std::move(control_fd);
  stop_requested_.store(false);
  worker_status_ = Ok();
  // std::thread reports a failure to create the thread only by throwing.
  try {
    worker_ = std::thread([this] { WorkerMain(); });
  } catch (const std::system_error& error) {
    epoll_fd_.Reset();
    control_fd_.Reset();
    return Error("creating the worker thread failed", error.code().value());
  }
  return Ok();
}

Status VirtioBlock::StopWorker() {
  if (!worker_.joinable()) return Ok();
  stop_requested_.store(true);
  uint64_t one = 1;
  ssize_t unused = ::write(control_fd_.get(), &one, sizeof(one));
  (void)unused;
  worker_.join();
  epoll_fd_.Reset();
  control_fd_.Reset();
  return std::move(worker_status_);
}

void VirtioBlock::WorkerMain() {
  Status loop = RunWorkerLoop();
  // Complete everything in flight, whatever ended the loop, so no request
  // is left unanswered and no I/O outlives the worker.
  Status drained = backend_->Drain();
  NotifyDriver();
  if (!loop.ok()) {
    worker_status_ = std::move(loop);
  } else if (!drained.ok()) {
    worker_status_ = std::move(drained).error().WithContext("completing requests in flight");
  }
  if (!worker_status_.ok() && !stop_requested_.load()) {
    LOG_ERROR("virtio-blk {}: the worker stopped: {}", name_, worker_status_.error().message());
    interrupt_->NotifyNeedsReset();
  }
}

Status VirtioBlock::RunWorkerLoop() {
  // Work may have arrived while the worker was stopped (or, after a
  // restore, in another process), with no notification to wake it.
  for (size_t queue = 0; queue < queues_.size(); ++queue) ProcessQueue(queue);
  NotifyDriver();
  epoll_event events[kMaxEventsPerWait];
  while (!stop_requested_.load()) {
    int count = epoll_wait(epoll_fd_.get(), events, kMaxEventsPerWait, -1);
    if (count < 0) {
      if (errno == EINTR) continue;
      return Error::FromErrno("epoll_wait", fmt::format("virtio-blk {} worker", name_));
    }
    for (int i = 0; i < count; ++i) {
      const uint64_t tag = events[i].data.u64;
      if (tag == kControlTag) {
        ClearEventfd(control_fd_.get());
      } else if (tag == kCompletionTag) {
        PollCompletions();
      } else if (tag < queues_.size()) {
        ClearEventfd(notify_fds_[tag]);
        ProcessQueue(tag);
      }
    }
    NotifyDriver();
  }
  return Ok();
}

void VirtioBlock::ProcessQueue(size_t queue) {
  Virtqueue& virtqueue = queues_[queue];
  if (virtqueue.broken()) return;
  while (true) {
    while (in_flight_[queue] < virtqueue.size()) {
      auto popped = virtqueue.Pop();
      if (!popped.ok()) {
        broken_queues_.fetch_add(1, std::memory_order_relaxed);
        LogLimited(log_limiter_, LogLevel::kWarning,
                   "virtio-blk {}: queue {} stopped until the driver resets the device: {}", name_,
                   queue, popped.error().message());
        interrupt_->NotifyNeedsReset();
        return;
      }
      if (!popped->has_value()) break;
      HandleChain(queue, std::move(**popped));
    }
    // At the in-flight limit the next completion calls this again.
    if (in_flight_[queue] >= virtqueue.size()) return;
    if (!virtqueue.RequestAvailableNotification()) return;
  }
}

void VirtioBlock::CountInvalid(const ParsedBlockRequest& request, const DescriptorChain& chain) {
  if (chain.error != ChainError::kNone) {
    malformed_chains_.fetch_add(1, std::memory_order_relaxed);
  }
  if (request.status == VIRTIO_BLK_S_UNSUPP) {
    unsupported_requests_.fetch_add(1, std::memory_order_relaxed);
  } else {
    invalid_requests_.fetch_add(1, std::memory_order_relaxed);
  }
  const std::string_view reason =
      chain.error != ChainError::kNone ? ChainErrorName(chain.error) : request.error;
  if (!request.status_address) {
    LogLimited(log_limiter_, LogLevel::kWarning,
               "virtio-blk {}: request at descriptor {} returned without a status: {}", name_,
               chain.head, reason);
    return;
  }
  LogLimited(log_limiter_, LogLevel::kWarning,
             "virtio-blk {}: request at descriptor {} failed with {}: {}", name_, chain.head,
             request.status == VIRTIO_BLK_S_UNSUPP ? "VIRTIO_BLK_S_UNSUPP" : "VIRTIO_BLK_S_IOERR",
             reason);
}

void VirtioBlock::HandleChain(size_t queue, DescriptorChain chain) {
  requests_.fetch_add(1, std::memory_order_relaxed);
  ParsedBlockRequest request = ParseBlockRequest(*memory_, chain, limits_);
  if (request.status != VIRTIO_BLK_S_OK) {
    CountInvalid(request, chain);
    Complete(queue, chain.head, request.status_address, request.status, request.used_length_error);
    return;
  }
  if (request.type == BlockRequestType::kGetId) {
    block::CopyToIovecs(request.data, std::span(id_).first(request.data_bytes));
    Complete(queue, chain.head, request.status_address, VIRTIO_BLK_S_OK, request.used_length_ok);
    return;
  }
  Submit(queue, chain.head, request);
}

void VirtioBlock::Submit(size_t queue, uint16_t head, ParsedBlockRequest& request) {
  std::vector<block::BlockRequest> operations;
  switch (request.type) {
    case BlockRequestType::kRead:
    case BlockRequestType::kWrite:
      if (request.data_bytes == 0) break;
      operations.push_back({.op = request.type == BlockRequestType::kRead ? block::BlockOp::kRead
                                                                          : block::BlockOp::kWrite,
                            .offset = request.sector * kSectorSize,
                            .iov = std::move(request.data)});
      break;
    case BlockRequestType::kFlush:
      operations.push_back({.op = block::BlockOp::kFlush});
      break;
    case BlockRequestType::kDiscard:
    case BlockRequestType::kWriteZeroes:
      for (const BlockRange& range : request.ranges) {
        if (range.sectors == 0) continue;
        operations.push_back({.op = request.type == BlockRequestType::kDiscard
                                        ? block::BlockOp::kDiscard
                                        : block::BlockOp::kWriteZeroes,
                              .offset = range.sector * kSectorSize,
                              .length = uint64_t{range.sectors} * kSectorSize});
      }
      break;
    case BlockRequestType::kGetId:
      break;
  }
  if (operations.empty()) {
    Complete(queue, head, request.status_address, VIRTIO_BLK_S_OK, request.used_length_ok);
    return;
  }

  auto in_flight =
      std::make_shared<InFlight>(InFlight{.queue = queue,
                                          .head = head,
                                          .status_address = request.status_address,
                                          .used_length_ok = request.used_length_ok,
                                          .used_length_error = request.used_length_error,
                                          .remaining = operations.size()});
  ++in_flight_[queue];
  for (block::BlockRequest& operation : operations) {
    // The backend runs `done` from Poll() or Drain() on this thread, never
    // from inside Submit(), so `remaining` is only touched here.
    operation.done = [this, in_flight](Status status) {
      if (!status.ok()) {
        in_flight->failed = true;
        LogLimited(log_limiter_, LogLevel::kError, "virtio-blk {}: {}", name_,
                   status.error().message());
      }
      if (--in_flight->remaining == 0) FinishRequest(in_flight);
    };
    backend_->Submit(std::move(operation));
  }
}

void VirtioBlock::FinishRequest(const std::shared_ptr<InFlight>& request) {
  --in_flight_[request->queue];
  if (request->failed) io_errors_.fetch_add(1, std::memory_order_relaxed);
  Complete(request->queue, request->head, request->status_address,
           request->failed ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK,
           request->failed ? request->used_length_error : request->used_length_ok);
}

void VirtioBlock::Complete(size_t queue, uint16_t head, std::optional<uint64_t> status_address,
                           uint8_t status, uint32_t used_length) {
  if (status_address && !memory_->WriteObject<uint8_t>(*status_address, status).ok()) {
    used_length = 0;
  }
  Status pushed = queues_[queue].PushUsed(head, used_length);
  if (!pushed.ok()) {
    LogLimited(log_limiter_, LogLevel::kWarning, "virtio-blk {}: returning descriptor {}: {}",
               name_, head, pushed.error().message());
  }
  pushed_[queue] = true;
}

void VirtioBlock::PollCompletions() {
  auto polled = backend_->Poll();
  if (!polled.ok()) {
    LogLimited(log_limiter_, LogLevel::kError, "virtio-blk {}: polling completions: {}", name_,
               polled.error().message());
  }
  // Completions free in-flight slots, so a queue that hit the limit resumes.
  for (size_t queue = 0; queue < queues_.size(); ++queue) ProcessQueue(queue);
}

void VirtioBlock::NotifyDriver() {
  bool notify = false;
  for (size_t queue = 0; queue < queues_.size(); ++queue) {
    if (!pushed_[queue]) continue;
    pushed_[queue] = false;
    if (queues_[queue].ShouldNotify()) notify = true;
  }
  if (notify) interrupt_->NotifyUsedBuffers();
}

void VirtioBlock::Reset() {
  if (lifecycle_ == DeviceLifecycle::kAbandoned) return;
  if (lifecycle_ == DeviceLifecycle::kRunning) {
    Status stopped = StopWorker();
    if (!stopped.ok()) {
      LOG_ERROR("virtio-blk {}: reset: {}", name_, stopped.error().message());
    }
  }
  queues_.clear();
  notify_fds_.clear();
  interrupt_.reset();
  driver_features_ = 0;
  lifecycle_ = DeviceLifecycle::kInactive;
}

Result<VirtioDeviceState> VirtioBlock::Quiesce() {
  if (lifecycle_ != DeviceLifecycle::kRunning) {
    return Error(fmt::format("virtio-blk {}: cannot quiesce a device that is {}", name_,
                             DeviceLifecycleName(lifecycle_)));
  }
  Status stopped = StopWorker();
  lifecycle_ = DeviceLifecycle::kQuiesced;
  if (!stopped.ok()) {
    return std::move(stopped).error().WithContext(fmt::format("quiescing virtio-blk {}", name_));
  }
  return Save();
}

Status VirtioBlock::Resume() {
  if (lifecycle_ != DeviceLifecycle::kQuiesced) {
    return Error(fmt::format("virtio-blk {}: cannot resume a device that is {}", name_,
                             DeviceLifecycleName(lifecycle_)));
  }
  if (!backend_) {
    return Error(fmt::format("virtio-blk {}: no backend (call ReplaceBackend first)", name_));
  }
  TRY_CTX(StartWorker(), fmt::format("resuming virtio-blk {}", name_));
  lifecycle_ = DeviceLifecycle::kRunning;
  return Ok();
}

Result<VirtioDeviceState> VirtioBlock::Save() const {
  if (lifecycle_ == DeviceLifecycle::kRunning || lifecycle_ == DeviceLifecycle::kAbandoned) {
    return Error(fmt::format("virtio-blk {}: cannot save a device that is {} (quiesce it first)",
                             name_, DeviceLifecycleName(lifecycle_)));
  }
  VirtioDeviceState state;
  state.device_type = VIRTIO_ID_BLOCK;
  state.active = lifecycle_ == DeviceLifecycle::kQuiesced;
  state.driver_features = driver_features_;
  for (const Virtqueue& queue : queues_) state.queues.push_back(queue.Save());
  return state;
}

void VirtioBlock::AbandonAfterFork() {
  if (worker_.joinable()) {
    LOG_ERROR("virtio-blk {}: abandoned while running; quiesce devices before fork()", name_);
    // The thread does not exist in this process, so it can be neither
    // joined nor detached. Leaking the handle avoids std::terminate.
    new std::thread(std::move(worker_));
  }
  if (backend_) backend_->AbandonAsyncAfterFork();
  epoll_fd_.Reset();
  control_fd_.Reset();
  queues_.clear();
  notify_fds_.clear();
  interrupt_.reset();
  lifecycle_ = DeviceLifecycle::kAbandoned;
}

std::unique_ptr<block::BlockBackend> VirtioBlock::ReleaseBackend() {
  if (!worker_stopped()) return nullptr;
  return std::move(backend_);
}

Status VirtioBlock::ReplaceBackend(std::unique_ptr<block::BlockBackend> backend) {
  if (!worker_stopped()) {
    return Error(fmt::format("virtio-blk {}: cannot replace the backend while running", name_));
  }
  if (!backend) return Error(fmt::format("virtio-blk {}: no replacement backend", name_));
  if (backend->size() != disk_bytes_ || backend->read_only() != read_only_) {
    return Error(fmt::format(
        "virtio-blk {}: replacement {} has size {} and read-only {}, "
        "expected {} and {}",
        name_, backend->path(), backend->size(), backend->read_only(), disk_bytes_, read_only_));
  }
  backend_ = std::move(backend);
  name_ = backend_->path();
  return Ok();
}

VirtioBlockCounters VirtioBlock::counters() const {
  return {.requests = requests_.load(),
          .malformed_chains = malformed_chains_.load(),
          .invalid_requests = invalid_requests_.load(),
          .unsupported_requests = unsupported_requests_.load(),
          .io_errors = io_errors_.load(),
          .broken_queues = broken_queues_.load()};
}

}  // namespace forkvmm::devices::virtio
