/*
 * A ring-3 virtio-blk driver for the test guests, over forkvmm's
 * virtio-mmio transport (version 2).
 *
 * It follows virtio 1.2: the MMIO registers of §4.2.2, the initialization
 * sequence of §3.1.1, one split virtqueue (§2.7) and the block requests of
 * §5.2.6. It negotiates only VIRTIO_F_VERSION_1, and VIRTIO_BLK_F_FLUSH and
 * VIRTIO_BLK_F_RO where the device offers them. It finds completions by
 * polling the used ring: it sets VIRTQ_AVAIL_F_NO_INTERRUPT, so the device
 * sends no interrupts, and the device's IOAPIC input stays masked.
 *
 * Each request takes three descriptors (header, data, status) or two
 * without data, at fixed places, so up to RT_BLK_MAX_REQUESTS requests are
 * in flight. Data buffers are passed by pointer. The runtime maps RAM
 * one-to-one, so a pointer is the guest-physical address the device uses.
 *
 * Not thread-safe: one CPU drives a disk.
 */
#ifndef FORKVMM_TESTS_GUESTS_VIRTIO_BLK_H
#define FORKVMM_TESTS_GUESTS_VIRTIO_BLK_H

#include "runtime.h"

#define RT_BLK_SECTOR_BYTES 512u
/* Descriptors in the queue, when the device allows that many. */
#define RT_BLK_QUEUE_SIZE 64u
#define RT_BLK_MAX_REQUESTS (RT_BLK_QUEUE_SIZE / 3)

/* Request types (virtio 1.2 §5.2.6). */
#define RT_BLK_T_IN 0u
#define RT_BLK_T_OUT 1u
#define RT_BLK_T_FLUSH 4u
#define RT_BLK_T_GET_ID 8u
/* VIRTIO_BLK_T_GET_ID returns this many bytes. */
#define RT_BLK_ID_BYTES 20u

/* Request status: the device's status byte (0 to 2), or the driver's own
 * errors, which are negative. */
#define RT_BLK_S_OK 0
#define RT_BLK_S_IOERR 1
#define RT_BLK_S_UNSUPP 2
#define RT_BLK_ERROR_BUSY (-1)     /* every request slot is in flight */
#define RT_BLK_ERROR_INVALID (-2)  /* a buffer or length the driver cannot pass */
#define RT_BLK_ERROR_TIMEOUT (-3)  /* no completion within the wait's limit */
/* The device returned a descriptor it was not given, or left a status
 * byte unwritten. */
#define RT_BLK_ERROR_DEVICE (-4)

/* Feature bits (virtio 1.2 §5.2.3 and §6). */
#define RT_BLK_F_RO 5u
#define RT_BLK_F_FLUSH 9u
#define RT_VIRTIO_F_VERSION_1 32u

/* Split-virtqueue structures (virtio 1.2 §2.7.5, §2.7.6, §2.7.8). */
struct rt_virtq_desc {
  uint64_t address;
  uint32_t length;
  uint16_t flags;
  uint16_t next;
};

struct rt_virtq_avail {
  uint16_t flags;
  uint16_t index;
  uint16_t ring[RT_BLK_QUEUE_SIZE];
  uint16_t used_event;
};

struct rt_virtq_used_element {
  uint32_t id;
  uint32_t length;
};

struct rt_virtq_used {
  uint16_t flags;
  uint16_t index;
  struct rt_virtq_used_element ring[RT_BLK_QUEUE_SIZE];
  uint16_t avail_event;
};

/* The header of a block request (virtio 1.2 §5.2.6). */
struct rt_blk_request_header {
  uint32_t type;
  uint32_t reserved;
  uint64_t sector;
};

struct rt_blk_completion {
  int tag;            /* the value rt_blk_submit returned */
  int status;         /* RT_BLK_S_* */
  uint32_t length;    /* bytes the device wrote, status byte included */
};

/* One disk and its queue. Declare it static: the rings inside must stay at
 * the addresses the driver gave the device. */
struct rt_blk {
  struct rt_virtq_desc descriptors[RT_BLK_QUEUE_SIZE] __attribute__((aligned(16)));
  struct rt_virtq_avail avail __attribute__((aligned(2)));
  struct rt_virtq_used used __attribute__((aligned(4)));
  struct rt_blk_request_header headers[RT_BLK_MAX_REQUESTS];
  volatile uint8_t statuses[RT_BLK_MAX_REQUESTS];
  bool busy[RT_BLK_MAX_REQUESTS];
  uint64_t base;            /* MMIO window */
  uint64_t features;        /* negotiated */
  uint64_t capacity;        /* 512-byte sectors */
  uint16_t queue_size;      /* descriptors in use, at most RT_BLK_QUEUE_SIZE */
  uint16_t requests;        /* request slots: queue_size / 3 */
  uint16_t next_avail;      /* the avail index the driver publishes next */
  uint16_t last_used;       /* the used index up to which completions were taken */
  uint16_t in_flight;
};

/* Resets and initializes the virtio-blk device in MMIO slot `slot`.
 * Returns 0, or a message saying what is wrong (no device there, a version
 * or feature set the driver cannot use, a queue too small). */
const char* rt_blk_init(struct rt_blk* disk, unsigned slot);
bool rt_blk_read_only(const struct rt_blk* disk);

/* Queues a request and notifies the device. `bytes` must be a multiple of
 * 512 for reads and writes, RT_BLK_ID_BYTES for GET_ID and 0 for FLUSH.
 * Returns a tag (0 or more) that the completion carries, or
 * RT_BLK_ERROR_BUSY or RT_BLK_ERROR_INVALID. */
int rt_blk_submit(struct rt_blk* disk, uint32_t type, uint64_t sector, void* buffer,
                  uint32_t bytes);
/* Takes one completed request off the used ring, if there is one. Returns
 * true and fills `out` if so. out->status is RT_BLK_ERROR_DEVICE for a
 * status byte the device left unwritten, and also for a descriptor the
 * driver did not submit, which gets out->tag -1. */
bool rt_blk_poll(struct rt_blk* disk, struct rt_blk_completion* out);
/* Polls until a request completes or `timeout_ns` of kvmclock time pass.
 * Returns 0, or RT_BLK_ERROR_TIMEOUT. */
int rt_blk_wait(struct rt_blk* disk, struct rt_blk_completion* out, uint64_t timeout_ns);
/* Submits one request and waits up to 5 s for it, with no other request
 * in flight. Returns its status, or a negative driver error. */
int rt_blk_transfer(struct rt_blk* disk, uint32_t type, uint64_t sector, void* buffer,
                    uint32_t bytes);

#endif
