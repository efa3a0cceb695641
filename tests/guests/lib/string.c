/* The C library functions GCC may emit calls to, even when freestanding. */
#include "runtime.h"

void* memset(void* destination, int value, size_t length) {
  unsigned char* out = destination;
  for (size_t i = 0; i < length; ++i) out[i] = (unsigned char)value;
  return destination;
}

void* memcpy(void* destination, const void* source, size_t length) {
  unsigned char* out = destination;
  const unsigned char* in = source;
  for (size_t i = 0; i < length; ++i) out[i] = in[i];
  return destination;
}

int memcmp(const void* a, const void* b, size_t length) {
  const unsigned char* left = a;
  const unsigned char* right = b;
  for (size_t i = 0; i < length; ++i) {
    if (left[i] != right[i]) return left[i] < right[i] ? -1 : 1;
  }
  return 0;
}

size_t strlen(const char* text) {
  size_t length = 0;
  while (text[length]) ++length;
  return length;
}
