// Error values used across forkvmm instead of exceptions.
//
// An Error carries a message chain ("opening disk a.qcow2: reading header:
// unexpected end of file") and, when a system call failed, the errno it
// returned. Callers add context as the error travels up and the top level
// prints the whole chain once.
#pragma once

#include <cerrno>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace forkvmm {

class Error {
 public:
  // An error with no errno, for invalid input and logic failures.
  explicit Error(std::string message, int errnum = 0)
      : message_(std::move(message)), errnum_(errnum) {}

  // Builds an error from the errno of a call that just failed. `operation`
  // names the call ("KVM_CREATE_VM", "open"), `context` the object it acted
  // on. Read errno before any other call can change it.
  static Error FromErrno(std::string_view operation, std::string_view context = {},
                         int errnum = errno);

  // Prefixes the message with what the caller was doing.
  Error&& WithContext(std::string_view context) &&;

  const std::string& message() const { return message_; }
  int errnum() const { return errnum_; }

 private:
  std::string message_;
  int errnum_;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : state_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  Result(Error error) : state_(std::in_place_index<1>, std::move(error)) {}  // NOLINT

  bool ok() const { return state_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { return std::get<0>(state_); }
  const T& value() const& { return std::get<0>(state_); }
  T&& value() && { return std::get<0>(std::move(state_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const& { return std::get<1>(state_); }
  Error&& error() && { return std::get<1>(std::move(state_)); }

 private:
  std::variant<T, Error> state_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT: implicit by design

  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const& { return error_; }
  Error&& error() && { return std::move(error_); }

 private:
  Error error_{""};
  bool ok_ = true;
};

using Status = Result<void>;

inline Status Ok() { return {}; }

}  // namespace forkvmm

#define FORKVMM_CONCAT_INNER(a, b) a##b
#define FORKVMM_CONCAT(a, b) FORKVMM_CONCAT_INNER(a, b)

// Returns the error of a Status or Result expression from the enclosing
// function, which must itself return a Status or Result.
#define TRY(expr)                                      \
  do {                                                 \
    auto&& try_result_ = (expr);                       \
    if (!try_result_.ok()) {                           \
      return std::move(try_result_).error();           \
    }                                                  \
  } while (0)

// Like TRY, with context added to the error message.
#define TRY_CTX(expr, context)                                      \
  do {                                                              \
    auto&& try_result_ = (expr);                                    \
    if (!try_result_.ok()) {                                        \
      return std::move(try_result_).error().WithContext(context);   \
    }                                                               \
  } while (0)

// Evaluates a Result expression and moves its value into `lhs`, or returns
// its error. `lhs` may be a declaration: ASSIGN_OR_RETURN(auto fd, Open(p));
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL(FORKVMM_CONCAT(assign_result_, __LINE__), lhs, expr, )
#define ASSIGN_OR_RETURN_CTX(lhs, expr, context)                            \
  ASSIGN_OR_RETURN_IMPL(FORKVMM_CONCAT(assign_result_, __LINE__), lhs, expr, \
                        .WithContext(context))
#define ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr, suffix) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) {                                    \
    return std::move(tmp).error() suffix;             \
  }                                                   \
  lhs = std::move(tmp).value()
