#include "vmm/base/result.h"

#include <cstring>

namespace forkvmm {

Error Error::FromErrno(std::string_view operation, std::string_view context, int errnum) {
  std::string message(operation);
  if (!context.empty()) {
    message += ' ';
    message += context;
  }
  message += ": ";
  message += std::strerror(errnum);
  return Error(std::move(message), errnum);
}

Error&& Error::WithContext(std::string_view context) && {
  std::string prefixed(context);
  prefixed += ": ";
  prefixed += message_;
  message_ = std::move(prefixed);
  return std::move(*this);
}

}  // namespace forkvmm
