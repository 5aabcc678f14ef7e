#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets other than `message` (whose seeds are captured
messages): valid inputs that reach deep into each parser, for the fuzzer to mutate.

Usage: server/fuzz/make_seeds.py   (rewrites corpus/*/seed-* of every target here)
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    directory = os.path.join(HERE, "corpus", target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "seed-" + name), "wb") as f:
        f.write(data)


# --- vfio-user messages -------------------------------------------------------------------
VERSION, DMA_MAP, DMA_UNMAP, GET_INFO, GET_REGION_INFO = 1, 2, 3, 4, 5
GET_IRQ_INFO, SET_IRQS, REGION_READ, REGION_WRITE, RESET = 7, 8, 9, 10, 13
CONFIG_REGION, MSIX_BAR, VIRTIO_BAR = 7, 1, 4
COMMON, NOTIFY = 0x0, 0x3000
NO_REPLY = 0x10


class Connection:
    def __init__(self):
        self.records = b""
        self.msg_id = 0

    def message(self, command, body, fd=False, flags=0):
        self.msg_id += 1
        header = struct.pack("<HHIII", self.msg_id, command, 16 + len(body), flags, 0)
        message = header + body
        self.records += struct.pack("<BH", 1 if fd else 0, len(message)) + message

    def version(self):
        caps = b'{"capabilities":{"max_msg_fds":16,"pgsizes":4096}}\0'
        self.message(VERSION, struct.pack("<HH", 0, 0) + caps)

    def dma_map(self, address, size, offset=0):
        self.message(DMA_MAP, struct.pack("<IIQQQ", 32, 3, offset, address, size), fd=True)

    def write(self, region, offset, data, posted=False):
        body = struct.pack("<QII", offset, region, len(data)) + data
        self.message(REGION_WRITE, body, flags=NO_REPLY if posted else 0)

    def read(self, region, offset, count):
        self.message(REGION_READ, struct.pack("<QII", offset, region, count))

    def common(self, field, fmt, value):
        self.write(VIRTIO_BAR, COMMON + field, struct.pack("<" + fmt, value))

    def setup_queue(self, queue, desc, avail, used, size=16):
        self.common(0x16, "H", queue)
        self.common(0x18, "H", size)
        self.common(0x1A, "H", queue)
        self.common(0x20, "Q", desc)
        self.common(0x28, "Q", avail)
        self.common(0x30, "Q", used)
        self.common(0x1C, "H", 1)

    def kick(self, queue):
        self.write(VIRTIO_BAR, NOTIFY + 4 * queue, struct.pack("<H", queue), posted=True)


class Memory:
    """The guest memory prefix: DMA-mapped at guest address 0."""

    def __init__(self, size=0xC000):
        self.bytes = bytearray(size)

    def put(self, address, data):
        self.bytes[address : address + len(data)] = data

    def descriptor(self, table, index, address, length, flags, next_index):
        self.put(table + 16 * index, struct.pack("<QIHH", address, length, flags, next_index))

    def avail(self, ring, heads):
        self.put(ring, struct.pack("<HH", 0, len(heads)) + b"".join(struct.pack("<H", h) for h in heads))


NEXT, WRITE, INDIRECT = 1, 2, 4
LUN0 = bytes([1, 0, 0x40, 0, 0, 0, 0, 0])
LUN3 = bytes([1, 0, 0x40, 3, 0, 0, 0, 0])
SENSE_SIZE = 96
CMD_RESP = 4 + 4 + 2 + 1 + 1 + SENSE_SIZE


def cmd_req(lun, tag, cdb):
    return lun + struct.pack("<QBBB", tag, 0, 0, 0) + cdb.ljust(32, b"\0")


def initialized(memory_queues):
    """VERSION, the memory map, the status handshake and the given queues enabled."""
    c = Connection()
    c.version()
    c.message(GET_INFO, struct.pack("<IIII", 16, 0, 0, 0))
    c.dma_map(0, 0x100000)
    c.read(CONFIG_REGION, 0, 64)
    c.common(0x14, "B", 1)
    c.common(0x14, "B", 3)
    c.common(0x00, "I", 1)
    c.read(VIRTIO_BAR, COMMON + 0x04, 4)
    c.common(0x08, "I", 1)
    c.common(0x0C, "I", 1)  # VERSION_1
    c.common(0x08, "I", 0)
    c.common(0x0C, "I", (1 << 28) | (1 << 29))  # INDIRECT_DESC, EVENT_IDX
    c.common(0x14, "B", 0xB)
    for queue, (desc, avail, used) in memory_queues.items():
        c.setup_queue(queue, desc, avail, used)
    c.common(0x14, "B", 0xF)
    return c


def connection_input(memory, connection):
    return struct.pack("<H", len(memory.bytes)) + bytes(memory.bytes) + connection.records


def connection_seeds():
    queues = {0: (0x1000, 0x1400, 0x1800), 2: (0x2000, 0x2400, 0x2800), 3: (0x3000, 0x3400, 0x3800)}
    # Request queue: INQUIRY (data in), WRITE 10 (data out) and an indirect READ 10.
    m = Memory()
    desc, avail, _ = queues[2]
    m.put(0x8000, cmd_req(LUN0, 1, bytes([0x12, 0, 0, 0, 96, 0])))
    m.descriptor(desc, 0, 0x8000, 51, NEXT, 1)
    m.descriptor(desc, 1, 0x8100, CMD_RESP, NEXT | WRITE, 2)
    m.descriptor(desc, 2, 0x8200, 96, WRITE, 0)
    m.put(0x9000, cmd_req(LUN3, 2, bytes([0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0])))
    m.put(0x9200, b"\xa5" * 512)
    m.descriptor(desc, 3, 0x9000, 51, NEXT, 4)
    m.descriptor(desc, 4, 0x9200, 512, NEXT, 5)
    m.descriptor(desc, 5, 0x9100, CMD_RESP, WRITE, 0)
    m.put(0xA000, cmd_req(LUN3, 3, bytes([0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0])))
    m.descriptor(0xA800, 0, 0xA000, 51, NEXT, 1)
    m.descriptor(0xA800, 1, 0xA100, CMD_RESP, NEXT | WRITE, 2)
    m.descriptor(0xA800, 2, 0xA400, 512, WRITE, 0)
    m.descriptor(desc, 6, 0xA800, 48, INDIRECT, 0)
    m.avail(avail, [0, 3, 6])
    c = initialized(queues)
    c.kick(2)
    c.read(VIRTIO_BAR, 0x1000, 1)  # ISR
    c.message(RESET, b"")
    write("connection", "request-queue", connection_input(m, c))

    # Control queue: TMF ABORT TASK, LOGICAL UNIT RESET, and an AN query.
    m = Memory()
    desc, avail, _ = queues[0]
    m.put(0x8000, struct.pack("<II", 0, 0) + LUN0 + struct.pack("<Q", 7))
    m.descriptor(desc, 0, 0x8000, 24, NEXT, 1)
    m.descriptor(desc, 1, 0x8100, 1, WRITE, 0)
    m.put(0x9000, struct.pack("<II", 0, 5) + LUN3 + struct.pack("<Q", 0))
    m.descriptor(desc, 2, 0x9000, 24, NEXT, 3)
    m.descriptor(desc, 3, 0x9100, 1, WRITE, 0)
    m.put(0xA000, struct.pack("<I", 1) + LUN0 + struct.pack("<I", 0xFFFF))
    m.descriptor(desc, 4, 0xA000, 16, NEXT, 5)
    m.descriptor(desc, 5, 0xA100, 8, WRITE, 0)
    m.avail(avail, [0, 2, 4])
    c = initialized(queues)
    c.kick(0)
    write("connection", "control-queue", connection_input(m, c))

    # Hostile chains: a loop, a huge length, an unmapped address, an indirect in an indirect.
    m = Memory()
    desc, avail, _ = queues[3]
    m.descriptor(desc, 0, 0x8000, 51, NEXT, 1)
    m.descriptor(desc, 1, 0x8100, 0xFFFFFFFF, NEXT | WRITE, 0)
    m.descriptor(desc, 2, 0x7FFF_FFFF_0000, 51, NEXT, 3)
    m.descriptor(desc, 3, 0x8100, CMD_RESP, WRITE, 0)
    m.descriptor(0xB000, 0, 0xB800, 16, INDIRECT, 0)
    m.descriptor(desc, 4, 0xB000, 16, INDIRECT, 0)
    m.put(0x8000, cmd_req(LUN0, 9, bytes([0x00])))
    m.avail(avail, [0, 2, 4, 15, 99])
    c = initialized(queues)
    c.kick(3)
    c.message(DMA_UNMAP, struct.pack("<IIQQ", 32, 0, 0, 0x100000))
    c.kick(3)
    write("connection", "hostile-chains", connection_input(m, c))

    # Config space, MSI-X table and PBA, IRQ info and the device config.
    c = Connection()
    c.version()
    for index in range(10):
        c.message(GET_REGION_INFO, struct.pack("<IIIIQQ", 32, 0, index, 0, 0, 0))
    for index in range(5):
        c.message(GET_IRQ_INFO, struct.pack("<IIII", 16, 0, index, 0))
    c.read(CONFIG_REGION, 0, 256)
    c.write(CONFIG_REGION, 4, struct.pack("<H", 0x6))
    c.write(CONFIG_REGION, 0x10, struct.pack("<I", 0xFFFFFFFF))
    c.read(MSIX_BAR, 0, 64)
    c.write(MSIX_BAR, 0, struct.pack("<QII", 0xFEE00000, 0x4021, 0))
    c.read(MSIX_BAR, 0x800, 8)
    c.read(VIRTIO_BAR, 0x2000, 36)
    c.write(VIRTIO_BAR, 0x2000 + 16, struct.pack("<I", 252))
    c.message(SET_IRQS, struct.pack("<IIIII", 20, 0x21, 2, 0, 1), fd=True)
    write("connection", "config-space", connection_input(Memory(16), c))


def scsi_record(lun, cdb, data_out=b""):
    return bytes([lun, len(cdb)]) + cdb + struct.pack("<H", len(data_out)) + data_out


def scsi_seeds():
    mode_select = bytes([0x55, 0x10, 0, 0, 0, 0, 0, 0, 28, 0])
    caching = bytes([0, 0, 0, 0, 0, 0, 0, 0]) + bytes([0x08, 18, 0x04] + [0] * 17)
    unmap_list = struct.pack(">HH4x", 22, 16) + struct.pack(">QI4x", 8, 16)
    unmap = bytes([0x42, 0, 0, 0, 0, 0, 0, 0, len(unmap_list), 0])
    write_same16 = bytes([0x93, 0x08]) + struct.pack(">QI", 0, 64) + bytes([0, 0])
    write_same10 = bytes([0x41, 0]) + struct.pack(">I", 16) + bytes([0]) + struct.pack(">H", 8) + bytes([0])
    report_luns = bytes([0xA0, 0, 0, 0, 0, 0]) + struct.pack(">I", 256) + bytes([0, 0])
    write("scsi", "mode-select", scsi_record(0, mode_select, caching) + scsi_record(0, bytes([0x1A, 0, 0x08, 0, 255, 0])))
    write("scsi", "unmap", scsi_record(0, unmap, unmap_list))
    write("scsi", "write-same", scsi_record(0, write_same16, b"\x11" * 512) + scsi_record(1, write_same10, b"\0" * 4096))
    write("scsi", "report-luns", scsi_record(0, report_luns) + scsi_record(7, b"") + scsi_record(0, bytes([0, 0, 0, 0, 0, 0])))
    write("scsi", "inquiry-vpd", b"".join(scsi_record(0, bytes([0x12, 1, page, 0, 255, 0])) for page in (0, 0x80, 0x83, 0xB0, 0xB1, 0xB2)))


def text_seeds():
    for name, spec in {
        "file": "path=/var/lib/disk.img,lun=2,readonly=on,serial=abc,cache=none,discard=unmap,logical-block-size=4096",
        "null": "null,size=1G,lun=1,latency-us=20",
        "comma": "path=/tmp/a,,b.img,serial=x,,y\nnull,size=512K",
    }.items():
        write("disk_spec", name, spec.encode())
    mapping = '[{"iothread":"io0","vqs":["ctrl","event",0,2]},{"iothread":"io1","vqs":[1,3]}]'
    write("mapping", "named", bytes([4, 2]) + mapping.encode())
    write("mapping", "no-vqs", bytes([2, 2]) + b'[{"iothread":"io0"},{"iothread":"io1"}]')


# --- the device-level targets (their input formats are in each target's doc comment) -----
DATA_BASE, HIGH, TOP, AREA = 0xC000, 0x20000, 0xFFFF_FFFF_FFFE_0000, 0x10000
AREA_DATA, AREA_HIGH, AREA_TOP, AREA_RINGS, AREA_HIGH_END = 0, 1, 2, 3, 4


def chain_bytes(area, offset, data):
    return bytes([0, area]) + struct.pack("<HB", offset, len(data)) + data


def chain_desc(table, index, address, length, flags, next_index):
    return bytes([1, table]) + struct.pack("<HQIHH", index, address, length, flags, next_index)


def chain_publish(head):
    return bytes([2]) + struct.pack("<H", head)


CHAIN_KICK, CHAIN_TOGGLE_HIGH, CHAIN_RESET = bytes([3]), bytes([4]), bytes([5])


def descriptor_chain_seeds():
    # Queue size 32, EVENT_IDX and INDIRECT_DESC; INQUIRY, then READ(10) through an indirect
    # table, then REPORT LUNS with its data in HIGH.
    s = bytes([4 | 8 | 0x10])
    s += chain_bytes(AREA_DATA, 0x1000, cmd_req(LUN0, 1, bytes([0x12, 0, 0, 0, 96, 0])))
    s += chain_desc(AREA_RINGS, 0, DATA_BASE + 0x1000, 51, NEXT, 1)
    s += chain_desc(AREA_RINGS, 1, DATA_BASE + 0x1100, CMD_RESP, NEXT | WRITE, 2)
    s += chain_desc(AREA_RINGS, 2, DATA_BASE + 0x1200, 96, WRITE, 0)
    s += chain_publish(0) + CHAIN_KICK
    lun1 = bytes([1, 0, 0x40, 1, 0, 0, 0, 0])
    s += chain_bytes(AREA_DATA, 0x2000, cmd_req(lun1, 2, bytes([0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0])))
    s += chain_desc(AREA_DATA, 0, DATA_BASE + 0x2000, 51, NEXT, 1)
    s += chain_desc(AREA_DATA, 1, DATA_BASE + 0x2100, CMD_RESP, NEXT | WRITE, 2)
    s += chain_desc(AREA_DATA, 2, HIGH + 0x1000, 4096, WRITE, 0)
    s += chain_desc(AREA_RINGS, 3, DATA_BASE, 48, INDIRECT, 0)
    s += chain_publish(3) + CHAIN_KICK
    s += chain_bytes(AREA_HIGH, 0x100, cmd_req(LUN0, 3, bytes([0xA0, 0, 0, 0, 0, 0]) + struct.pack(">I", 256) + bytes([0, 0])))
    s += chain_desc(AREA_RINGS, 4, HIGH + 0x100, 51, NEXT, 5)
    s += chain_desc(AREA_RINGS, 5, HIGH + 0x200, CMD_RESP + 256, WRITE, 0)
    s += chain_publish(4) + CHAIN_KICK
    write("descriptor_chains", "valid", s)

    # Hostile: a loop, a huge length, a buffer in the hole, one running off the end of HIGH,
    # one at the top of the address space, an indirect table inside an indirect table, an
    # indirect table of odd length, a next index past the queue, then the memory goes away.
    s = bytes([3 | 0x10])
    s += chain_bytes(AREA_DATA, 0x1000, cmd_req(LUN0, 9, bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0])))
    s += chain_desc(AREA_RINGS, 0, DATA_BASE + 0x1000, 51, NEXT, 1)
    s += chain_desc(AREA_RINGS, 1, DATA_BASE + 0x1100, 0xFFFF_FFFF, NEXT | WRITE, 0)
    s += chain_desc(AREA_RINGS, 2, DATA_BASE + 0x1000, 51, NEXT, 3)
    s += chain_desc(AREA_RINGS, 3, 0x10000, CMD_RESP, NEXT | WRITE, 4)
    s += chain_desc(AREA_RINGS, 4, HIGH + AREA - 16, 4096, WRITE, 0)
    s += chain_desc(AREA_RINGS, 5, DATA_BASE + 0x1000, 51, NEXT, 6)
    s += chain_desc(AREA_RINGS, 6, 0xFFFF_FFFF_FFFF_FFF0, 0x20, WRITE, 0)
    s += chain_desc(AREA_HIGH, 0, HIGH + 0x800, 32, INDIRECT, 0)
    s += chain_desc(AREA_RINGS, 7, HIGH, 16, INDIRECT, 0)
    s += chain_desc(AREA_RINGS, 8, DATA_BASE, 40, INDIRECT, 0)
    s += chain_desc(AREA_RINGS, 9, DATA_BASE + 0x1000, 51, NEXT, 200)
    s += chain_desc(AREA_RINGS, 10, AREA_HIGH_END, 0, NEXT | WRITE | INDIRECT, 10)
    s += bytes([6, 0, 11]) + CHAIN_KICK
    s += chain_publish(1) + CHAIN_TOGGLE_HIGH + CHAIN_KICK + CHAIN_TOGGLE_HIGH
    s += bytes([7]) + struct.pack("<H", 0x8000) + CHAIN_KICK + CHAIN_RESET + chain_publish(0) + CHAIN_KICK
    write("descriptor_chains", "hostile", s)


def control_command(queue, lun, tag, cdb):
    return bytes([8, queue, lun, tag]) + cdb.ljust(10, b"\0")


def control_tmf(subtype, lun, tag, response_len=1):
    return bytes([6, subtype, lun, tag, response_len])


READ10 = bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0])
TUR = bytes([0] * 10)
RELEASE = lambda n: bytes([4, n])
ABORT_TASK, ABORT_TASK_SET, I_T_NEXUS_RESET, LOGICAL_UNIT_RESET, QUERY_TASK, QUERY_TASK_SET = 0, 1, 4, 5, 6, 7


def control_queue_seeds():
    # A READ held in flight on each request queue; QUERY TASK, ABORT TASK (which waits), the
    # completions, then ABORT TASK SET and LOGICAL UNIT RESET over new commands, and a reset
    # with commands and a TMF still in flight.
    s = bytes([0xF])
    s += control_command(0, 0, 0, TUR) + control_command(1, 1, 0, TUR) + RELEASE(2)
    s += control_command(0, 0, 1, READ10) + control_command(1, 0, 2, READ10)
    s += control_tmf(QUERY_TASK, 0, 1) + control_tmf(ABORT_TASK, 0, 1) + control_tmf(QUERY_TASK_SET, 0, 2)
    s += RELEASE(1) + RELEASE(4)
    s += control_command(0, 0, 3, READ10) + control_command(1, 1, 4, READ10)
    s += control_tmf(ABORT_TASK_SET, 0, 0) + control_tmf(LOGICAL_UNIT_RESET, 1, 0) + control_tmf(I_T_NEXUS_RESET, 0, 0)
    s += RELEASE(8)
    s += control_command(0, 0, 5, READ10) + control_tmf(ABORT_TASK, 0, 5) + bytes([5])
    write("control_queue", "tmf-in-flight", s)

    # AN query and subscribe on each LUN, with short responses and a malformed request.
    s = bytes([0x5])
    for lun in (0, 1, 2):
        s += bytes([7, 0, lun]) + struct.pack("<I", 0xFF) + bytes([7, 1, lun]) + struct.pack("<I", 0x52)
    s += control_tmf(ABORT_TASK, 0, 0, 0) + bytes([9, 3, 1, 0, 0])
    s += bytes([3, 0]) + bytes([2, 0]) + struct.pack("<H", 7) + bytes([3, 0])
    write("control_queue", "an", s)


COMMON_FIELD = {"device_feature_select": 0, "driver_feature_select": 2, "driver_feature": 3, "config_msix_vector": 4,
                "device_status": 6, "queue_select": 8, "queue_size": 9, "queue_msix_vector": 10, "queue_enable": 11,
                "queue_desc": 13, "queue_driver": 14, "queue_device": 15}


def pci_common(field, value):
    return bytes([2, COMMON_FIELD[field]]) + struct.pack("<Q", value)


def pci_read(region, offset, length):
    return bytes([0, region]) + struct.pack("<IB", offset, length)


def pci_write(region, offset, data):
    return bytes([1, region]) + struct.pack("<IB", offset, len(data)) + data


def pci_function_seeds():
    # The virtio handshake with two request queues, a kick, the ISR, a reset.
    s = pci_common("device_status", 0) + pci_common("device_status", 1) + pci_common("device_status", 3)
    s += pci_read(VIRTIO_BAR, COMMON + 0x04, 4) + pci_common("device_feature_select", 1) + pci_read(VIRTIO_BAR, COMMON + 0x04, 4)
    s += pci_common("driver_feature_select", 0) + pci_common("driver_feature", 1 << 28)
    s += pci_common("driver_feature_select", 1) + pci_common("driver_feature", 1)
    s += pci_common("device_status", 0xB) + pci_common("config_msix_vector", 0)
    for queue in range(4):
        s += pci_common("queue_select", queue) + pci_common("queue_size", 16) + pci_common("queue_msix_vector", queue + 1)
        s += pci_common("queue_desc", 0x1000 * queue) + pci_common("queue_driver", 0x4000 + 0x1000 * queue)
        s += pci_common("queue_device", 0x8000 + 0x1000 * queue) + pci_common("queue_enable", 1)
    s += pci_common("device_status", 0xF) + bytes([5, 2]) + pci_write(VIRTIO_BAR, NOTIFY + 8, struct.pack("<H", 2))
    s += pci_read(VIRTIO_BAR, 0x1000, 1) + pci_read(VIRTIO_BAR, 0x2000, 36) + pci_common("device_status", 0)
    s += pci_common("device_status", 0x80) + bytes([4])
    write("pci_function", "handshake", s)

    # Config space: IDs, command register, BAR sizing, capabilities; the MSI-X table and PBA;
    # SET_IRQS of every kind; accesses at the end of the address space; a disconnect.
    s = b"".join(pci_read(CONFIG_REGION, offset, 64) for offset in range(0, 256, 64))
    s += pci_write(CONFIG_REGION, 4, struct.pack("<H", 6)) + pci_write(CONFIG_REGION, 0x10, struct.pack("<I", 0xFFFFFFFF))
    s += pci_read(CONFIG_REGION, 0x10, 4) + pci_write(CONFIG_REGION, 0x30, struct.pack("<I", 0xFFFFF800))
    s += pci_read(CONFIG_REGION, 0x40, 16) + pci_write(CONFIG_REGION, 0x42, struct.pack("<H", 0xC000))
    s += pci_read(MSIX_BAR, 0, 64) + pci_write(MSIX_BAR, 16, struct.pack("<QII", 0xFEE00000, 0x4021, 1))
    s += pci_read(MSIX_BAR, 0x800, 8) + pci_write(MSIX_BAR, 0x800, struct.pack("<Q", 1))
    s += bytes([3, 2, 0, 0, 5]) + bytes([3, 2, 2, 1, 2]) + bytes([3, 2, 3, 0, 4]) + bytes([3, 2, 4, 0, 1]) + bytes([3, 2, 1, 0, 0])
    s += bytes([6, 7]) + struct.pack("<IB", 0, 4) + bytes([7, 4]) + struct.pack("<IB", 1, 2) + b"\1\0"
    s += bytes([8]) + bytes([9])
    write("pci_function", "config-msix", s)


connection_seeds()
scsi_seeds()
text_seeds()
descriptor_chain_seeds()
control_queue_seeds()
pci_function_seeds()
