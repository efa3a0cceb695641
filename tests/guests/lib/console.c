/* Console output and a small printf: %d %i %u %x %p %c %s %%, with the
 * length modifiers l, ll and z, the 0 flag and a field width. */
#include "runtime.h"

#define LINE_BYTES 256

static volatile uint32_t console_lock;

void rt_write(const char* text, size_t length) {
  if (rt_boot_info.protocol == RT_BOOT_FORKVMM) {
    volatile uint8_t* console = (volatile uint8_t*)(RT_DEBUG_DEVICE_ADDRESS + RT_DEBUG_CONSOLE_OFFSET);
    for (size_t i = 0; i < length; ++i) *console = (uint8_t)text[i];
  } else {
    rt_call(RT_CALL_CONSOLE_WRITE, (uint64_t)text, length, 0);
  }
}

struct output {
  char* buffer;
  size_t size;
  size_t length; /* bytes the full output needs, as snprintf counts them */
};

static void put(struct output* out, char c) {
  if (out->length + 1 < out->size) out->buffer[out->length] = c;
  out->length++;
}

static void put_number(struct output* out, uint64_t value, unsigned base, bool negative,
                       unsigned width, char pad) {
  char digits[24];
  unsigned count = 0;
  do {
    digits[count++] = "0123456789abcdef"[value % base];
    value /= base;
  } while (value != 0);
  unsigned total = count + (negative ? 1 : 0);
  if (negative && pad == '0') put(out, '-');
  for (; total < width; ++total) put(out, pad);
  if (negative && pad != '0') put(out, '-');
  while (count > 0) put(out, digits[--count]);
}

int rt_vsnprintf(char* buffer, size_t size, const char* format, va_list args) {
  struct output out = {buffer, size, 0};
  for (; *format; ++format) {
    if (*format != '%') {
      put(&out, *format);
      continue;
    }
    ++format;
    char pad = ' ';
    if (*format == '0') {
      pad = '0';
      ++format;
    }
    unsigned width = 0;
    while (*format >= '0' && *format <= '9') width = width * 10 + (unsigned)(*format++ - '0');
    unsigned longs = 0;
    while (*format == 'l' || *format == 'z') {
      ++longs;
      ++format;
    }
    switch (*format) {
      case 'd':
      case 'i': {
        int64_t value = longs ? va_arg(args, int64_t) : va_arg(args, int);
        uint64_t magnitude = value < 0 ? -(uint64_t)value : (uint64_t)value;
        put_number(&out, magnitude, 10, value < 0, width, pad);
        break;
      }
      case 'u':
      case 'x': {
        uint64_t value = longs ? va_arg(args, uint64_t) : va_arg(args, unsigned);
        put_number(&out, value, *format == 'x' ? 16 : 10, false, width, pad);
        break;
      }
      case 'p':
        put(&out, '0');
        put(&out, 'x');
        put_number(&out, (uint64_t)va_arg(args, void*), 16, false, width, pad);
        break;
      case 'c':
        put(&out, (char)va_arg(args, int));
        break;
      case 's': {
        const char* text = va_arg(args, const char*);
        while (*text) put(&out, *text++);
        break;
      }
      case '%':
        put(&out, '%');
        break;
      default:
        /* An unknown conversion is printed unchanged. */
        put(&out, '%');
        if (*format == '\0') --format;
        else put(&out, *format);
        break;
    }
  }
  if (size > 0) buffer[out.length < size ? out.length : size - 1] = '\0';
  return (int)out.length;
}

int rt_snprintf(char* buffer, size_t size, const char* format, ...) {
  va_list args;
  va_start(args, format);
  int length = rt_vsnprintf(buffer, size, format, args);
  va_end(args);
  return length;
}

int rt_printf(const char* format, ...) {
  char line[LINE_BYTES];
  va_list args;
  va_start(args, format);
  int length = rt_vsnprintf(line, sizeof(line), format, args);
  va_end(args);
  size_t written = (size_t)length < sizeof(line) ? (size_t)length : sizeof(line) - 1;
  while (__atomic_exchange_n(&console_lock, 1, __ATOMIC_ACQUIRE) != 0) rt_pause();
  rt_write(line, written);
  __atomic_store_n(&console_lock, 0, __ATOMIC_RELEASE);
  return length;
}
