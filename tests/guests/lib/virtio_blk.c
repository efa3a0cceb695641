/* The ring-3 virtio-blk driver (see virtio_blk.h). */
#include "virtio_blk.h"

/* virtio-mmio registers (virtio 1.2 §4.2.2). */
#define MMIO_MAGIC_VALUE 0x000
#define MMIO_VERSION 0x004
#define MMIO_DEVICE_ID 0x008
#define MMIO_DEVICE_FEATURES 0x010
#define MMIO_DEVICE_FEATURES_SEL 0x014
#define MMIO_DRIVER_FEATURES 0x020
#define MMIO_DRIVER_FEATURES_SEL 0x024
#define MMIO_QUEUE_SEL 0x030
#define MMIO_QUEUE_NUM_MAX 0x034
#define MMIO_QUEUE_NUM 0x038
#define MMIO_QUEUE_READY 0x044
#define MMIO_QUEUE_NOTIFY 0x050
#define MMIO_STATUS 0x070
#define MMIO_QUEUE_DESC_LOW 0x080
#define MMIO_QUEUE_DESC_HIGH 0x084
#define MMIO_QUEUE_DRIVER_LOW 0x090
#define MMIO_QUEUE_DRIVER_HIGH 0x094
#define MMIO_QUEUE_DEVICE_LOW 0x0a0
#define MMIO_QUEUE_DEVICE_HIGH 0x0a4
#define MMIO_CONFIG_GENERATION 0x0fc
#define MMIO_CONFIG 0x100

#define MMIO_MAGIC 0x74726976u /* "virt" */
#define VIRTIO_ID_BLOCK 2u

/* Device status bits (virtio 1.2 §2.1). */
#define STATUS_ACKNOWLEDGE 1u
#define STATUS_DRIVER 2u
#define STATUS_DRIVER_OK 4u
#define STATUS_FEATURES_OK 8u
#define STATUS_FAILED 128u

#define DESC_F_NEXT 1u
#define DESC_F_WRITE 2u
#define AVAIL_F_NO_INTERRUPT 1u

#define STATUS_PENDING 0xffu
#define RESET_POLLS 1000
#define TRANSFER_TIMEOUT_NS UINT64_C(5000000000)

static uint32_t mmio_read(const struct rt_blk* disk, uint32_t offset) {
  return *(volatile uint32_t*)(disk->base + offset);
}

static void mmio_write(const struct rt_blk* disk, uint32_t offset, uint32_t value) {
  *(volatile uint32_t*)(disk->base + offset) = value;
}

static void write_address(const struct rt_blk* disk, uint32_t low_offset, const void* pointer) {
  uint64_t address = (uint64_t)pointer;
  mmio_write(disk, low_offset, (uint32_t)address);
  mmio_write(disk, low_offset + 4, (uint32_t)(address >> 32));
}

static uint64_t read_device_features(const struct rt_blk* disk) {
  mmio_write(disk, MMIO_DEVICE_FEATURES_SEL, 0);
  uint64_t low = mmio_read(disk, MMIO_DEVICE_FEATURES);
  mmio_write(disk, MMIO_DEVICE_FEATURES_SEL, 1);
  uint64_t high = mmio_read(disk, MMIO_DEVICE_FEATURES);
  return high << 32 | low;
}

static void write_driver_features(const struct rt_blk* disk, uint64_t features) {
  mmio_write(disk, MMIO_DRIVER_FEATURES_SEL, 0);
  mmio_write(disk, MMIO_DRIVER_FEATURES, (uint32_t)features);
  mmio_write(disk, MMIO_DRIVER_FEATURES_SEL, 1);
  mmio_write(disk, MMIO_DRIVER_FEATURES, (uint32_t)(features >> 32));
}

/* The 64-bit capacity spans two registers, so it is read until the
 * configuration generation is the same before and after (virtio 1.2
 * §2.5.1). */
static uint64_t read_capacity(const struct rt_blk* disk) {
  uint32_t before, after;
  uint64_t capacity;
  do {
    before = mmio_read(disk, MMIO_CONFIG_GENERATION);
    capacity = (uint64_t)mmio_read(disk, MMIO_CONFIG + 4) << 32 | mmio_read(disk, MMIO_CONFIG);
    after = mmio_read(disk, MMIO_CONFIG_GENERATION);
  } while (before != after);
  return capacity;
}

/* Writes 0 to the status register and waits until the device reports the
 * reset done by reading back 0 (virtio 1.2 §4.2.3.1). */
static bool reset_device(const struct rt_blk* disk) {
  mmio_write(disk, MMIO_STATUS, 0);
  for (int poll = 0; poll < RESET_POLLS; ++poll) {
    if (mmio_read(disk, MMIO_STATUS) == 0) return true;
  }
  return false;
}

static const char* negotiate_features(struct rt_blk* disk) {
  uint64_t offered = read_device_features(disk);
  uint64_t version_1 = UINT64_C(1) << RT_VIRTIO_F_VERSION_1;
  if (!(offered & version_1)) return "the device does not offer VIRTIO_F_VERSION_1";
  uint64_t requested = version_1 | UINT64_C(1) << RT_BLK_F_FLUSH | UINT64_C(1) << RT_BLK_F_RO;
  disk->features = offered & requested;
  write_driver_features(disk, disk->features);
  mmio_write(disk, MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
  if (!(mmio_read(disk, MMIO_STATUS) & STATUS_FEATURES_OK)) {
    return "the device did not accept the features";
  }
  return 0;
}

/* Queue 0 gets up to RT_BLK_QUEUE_SIZE descriptors. Split queues have a
 * power-of-two size (virtio 1.2 §2.7), so halving QueueNumMax's limit
 * keeps it one. */
static const char* setup_queue(struct rt_blk* disk) {
  mmio_write(disk, MMIO_QUEUE_SEL, 0);
  if (mmio_read(disk, MMIO_QUEUE_READY) != 0) return "queue 0 is already in use";
  uint32_t maximum = mmio_read(disk, MMIO_QUEUE_NUM_MAX);
  uint32_t size = RT_BLK_QUEUE_SIZE;
  while (size > maximum) size /= 2;
  if (size < 4) return "the device's queue holds fewer than 4 descriptors";
  disk->queue_size = (uint16_t)size;
  disk->requests = (uint16_t)(size / 3);
  disk->avail.flags = AVAIL_F_NO_INTERRUPT;
  mmio_write(disk, MMIO_QUEUE_NUM, size);
  write_address(disk, MMIO_QUEUE_DESC_LOW, disk->descriptors);
  write_address(disk, MMIO_QUEUE_DRIVER_LOW, &disk->avail);
  write_address(disk, MMIO_QUEUE_DEVICE_LOW, &disk->used);
  mmio_write(disk, MMIO_QUEUE_READY, 1);
  return 0;
}

const char* rt_blk_init(struct rt_blk* disk, unsigned slot) {
  memset(disk, 0, sizeof(*disk));
  disk->base = RT_VIRTIO_MMIO_ADDRESS + (uint64_t)slot * RT_VIRTIO_MMIO_STRIDE;
  if (mmio_read(disk, MMIO_MAGIC_VALUE) != MMIO_MAGIC) return "no virtio-mmio device";
  if (mmio_read(disk, MMIO_VERSION) != 2) return "the virtio-mmio version is not 2";
  if (mmio_read(disk, MMIO_DEVICE_ID) != VIRTIO_ID_BLOCK) return "the device is not virtio-blk";
  if (!reset_device(disk)) return "the device did not complete its reset";
  mmio_write(disk, MMIO_STATUS, STATUS_ACKNOWLEDGE);
  mmio_write(disk, MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
  const char* error = negotiate_features(disk);
  if (error == 0) error = setup_queue(disk);
  if (error != 0) {
    mmio_write(disk, MMIO_STATUS, STATUS_FAILED);
    return error;
  }
  disk->capacity = read_capacity(disk);
  mmio_write(disk, MMIO_STATUS,
             STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
  return 0;
}

bool rt_blk_read_only(const struct rt_blk* disk) {
  return (disk->features >> RT_BLK_F_RO) & 1;
}

static bool valid_length(uint32_t type, uint32_t bytes) {
  switch (type) {
    case RT_BLK_T_IN:
    case RT_BLK_T_OUT:
      return bytes > 0 && bytes % RT_BLK_SECTOR_BYTES == 0;
    case RT_BLK_T_GET_ID:
      return bytes == RT_BLK_ID_BYTES;
    case RT_BLK_T_FLUSH:
      return bytes == 0;
    default:
      return true;
  }
}

static void set_descriptor(struct rt_blk* disk, uint16_t index, const volatile void* buffer,
                           uint32_t length, uint16_t flags) {
  struct rt_virtq_desc* descriptor = &disk->descriptors[index];
  descriptor->address = (uint64_t)buffer;
  descriptor->length = length;
  descriptor->flags = flags;
  descriptor->next = (uint16_t)(index + 1);
}

int rt_blk_submit(struct rt_blk* disk, uint32_t type, uint64_t sector, void* buffer,
                  uint32_t bytes) {
  if (!valid_length(type, bytes) || (bytes > 0 && buffer == 0)) return RT_BLK_ERROR_INVALID;
  int slot = -1;
  for (int i = 0; i < disk->requests; ++i) {
    if (!disk->busy[i]) {
      slot = i;
      break;
    }
  }
  if (slot < 0) return RT_BLK_ERROR_BUSY;

  disk->busy[slot] = true;
  disk->in_flight++;
  disk->headers[slot] = (struct rt_blk_request_header){type, 0, sector};
  disk->statuses[slot] = STATUS_PENDING;
  uint16_t head = (uint16_t)(3 * slot);
  uint16_t data_flags = DESC_F_NEXT;
  if (type == RT_BLK_T_IN || type == RT_BLK_T_GET_ID) data_flags |= DESC_F_WRITE;
  set_descriptor(disk, head, &disk->headers[slot], sizeof(disk->headers[slot]), DESC_F_NEXT);
  uint16_t status_index = (uint16_t)(head + 1);
  if (bytes > 0) {
    set_descriptor(disk, status_index, buffer, bytes, data_flags);
    status_index++;
  }
  set_descriptor(disk, status_index, &disk->statuses[slot], 1, DESC_F_WRITE);

  /* The ring entry and the descriptors must be visible before the index
   * that publishes them, and the index before the notification (virtio 1.2
   * §2.7.13). */
  disk->avail.ring[disk->next_avail % disk->queue_size] = head;
  disk->next_avail++;
  __atomic_store_n(&disk->avail.index, disk->next_avail, __ATOMIC_RELEASE);
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  mmio_write(disk, MMIO_QUEUE_NOTIFY, 0);
  return slot;
}

bool rt_blk_poll(struct rt_blk* disk, struct rt_blk_completion* out) {
  uint16_t used = __atomic_load_n(&disk->used.index, __ATOMIC_ACQUIRE);
  if (used == disk->last_used) return false;
  struct rt_virtq_used_element element = disk->used.ring[disk->last_used % disk->queue_size];
  disk->last_used++;
  uint32_t slot = element.id / 3;
  if (element.id % 3 != 0 || slot >= disk->requests || !disk->busy[slot]) {
    *out = (struct rt_blk_completion){-1, RT_BLK_ERROR_DEVICE, element.length};
    return true;
  }
  disk->busy[slot] = false;
  disk->in_flight--;
  uint8_t status = disk->statuses[slot];
  /* Every chain ends in a status byte, so a device that leaves it unwritten
   * is broken. */
  int result = status == STATUS_PENDING ? RT_BLK_ERROR_DEVICE : status;
  *out = (struct rt_blk_completion){(int)slot, result, element.length};
  return true;
}

int rt_blk_wait(struct rt_blk* disk, struct rt_blk_completion* out, uint64_t timeout_ns) {
  uint64_t start = rt_now_ns();
  while (!rt_blk_poll(disk, out)) {
    if (rt_now_ns() - start > timeout_ns) return RT_BLK_ERROR_TIMEOUT;
    rt_pause();
  }
  return 0;
}

int rt_blk_transfer(struct rt_blk* disk, uint32_t type, uint64_t sector, void* buffer,
                    uint32_t bytes) {
  if (disk->in_flight != 0) return RT_BLK_ERROR_BUSY;
  int tag = rt_blk_submit(disk, type, sector, buffer, bytes);
  if (tag < 0) return tag;
  struct rt_blk_completion completion;
  int waited = rt_blk_wait(disk, &completion, TRANSFER_TIMEOUT_NS);
  if (waited != 0) return waited;
  if (completion.tag != tag) return RT_BLK_ERROR_DEVICE;
  return completion.status;
}
