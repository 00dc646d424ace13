"""A small classic BPF interpreter, to run the packet filter (wgagent/wake.py) on
handmade packets without root.

It follows the kernel's socket filter semantics as an AF_PACKET SOCK_DGRAM socket
sees them: the packet starts at the network header, a load past its end makes the
filter return 0 (drop), `ldx msh` reads P[k]'s low nibble times 4, and the
ancillary loads SKF_AD_PROTOCOL (the ethertype) and SKF_AD_PKTTYPE come from
outside the packet's bytes. check() refuses what the kernel's bpf_check_classic
would: an empty or too long program, a jump out of it, a last instruction that is
not a return, a scratch slot out of range, an opcode it does not know here.
"""

from __future__ import annotations

import struct

BPF_MAXINSNS = 4096
MEMWORDS = 16
SKF_AD_OFF = -0x1000
SKF_AD_PROTOCOL, SKF_AD_PKTTYPE = 0, 4

# instruction classes, sizes, modes, operations, sources (linux/bpf_common.h)
LD, LDX, ST, STX, ALU, JMP, RET, MISC = range(8)
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND, MEM, LEN, MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
K, X = 0x00, 0x08
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
RVAL_A = 0x10
ALU_OPS = {0x00: lambda a, b: a + b, 0x10: lambda a, b: a - b, 0x20: lambda a, b: a * b,
           0x40: lambda a, b: a | b, 0x50: lambda a, b: a & b, 0x60: lambda a, b: a << (b & 31),
           0x70: lambda a, b: a >> (b & 31), 0xA0: lambda a, b: a ^ b}
SIZE = {W: 4, H: 2, B: 1}
MASK = 0xFFFFFFFF


class Invalid(ValueError):
    pass


def check(prog: list[tuple[int, int, int, int]]) -> None:
    if not 0 < len(prog) <= BPF_MAXINSNS:
        raise Invalid(f"{len(prog)} instructions")
    for pc, (code, jt, jf, k) in enumerate(prog):
        cls = code & 0x07
        if not (0 <= jt <= 255 and 0 <= jf <= 255 and 0 <= k <= MASK):
            raise Invalid(f"field out of range at {pc}: {code:#x} {jt} {jf} {k}")
        if cls == JMP:
            op = code & 0xF0
            if op == JA:
                if pc + 1 + k >= len(prog):
                    raise Invalid(f"ja out of the program at {pc}")
            elif op in (JEQ, JGT, JGE, JSET):
                if pc + 1 + max(jt, jf) >= len(prog):
                    raise Invalid(f"jump out of the program at {pc}")
            else:
                raise Invalid(f"jump {code:#x} at {pc}")
        elif cls in (LD, LDX):
            mode, size = code & 0xE0, code & 0x18
            ok = {LD: {(ABS, W), (ABS, H), (ABS, B), (IND, W), (IND, H), (IND, B), (IMM, W), (LEN, W), (MEM, W)},
                  LDX: {(IMM, W), (LEN, W), (MEM, W), (MSH, B)}}[cls]
            if (mode, size) not in ok:
                raise Invalid(f"load {code:#x} at {pc}")
            if mode == MEM and k >= MEMWORDS:
                raise Invalid(f"scratch slot {k} at {pc}")
        elif cls in (ST, STX):
            if code & 0xF8 or k >= MEMWORDS:
                raise Invalid(f"store {code:#x} {k} at {pc}")
        elif cls == ALU:
            if (code & 0xF0) not in ALU_OPS:
                raise Invalid(f"alu {code:#x} at {pc}")
        elif cls == RET:
            if code & 0x18 not in (K, RVAL_A):
                raise Invalid(f"ret {code:#x} at {pc}")
        elif cls == MISC:
            if code & 0xF8 not in (0x00, 0x80):
                raise Invalid(f"misc {code:#x} at {pc}")
    if prog[-1][0] & 0x07 != RET:
        raise Invalid("the last instruction is not a return")


def run(prog: list[tuple[int, int, int, int]], packet: bytes, protocol: int, pkttype: int = 0) -> int:
    """What the filter returns for this packet: 0 drops it, n keeps its first n bytes.
    protocol: the ethertype (0x0800, 0x86dd); pkttype: PACKET_HOST 0, PACKET_OUTGOING 4."""
    check(prog)
    a = x = 0
    mem = [0] * MEMWORDS
    pc = 0
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        cls = code & 0x07
        if cls in (LD, LDX):
            mode, size = code & 0xE0, code & 0x18
            if mode == IMM:
                v = k
            elif mode == LEN:
                v = len(packet)
            elif mode == MEM:
                v = mem[k]
            elif mode == MSH:
                if k >= len(packet):
                    return 0
                v = 4 * (packet[k] & 0xF)
            else:
                off = k if mode == ABS else (x + k) & MASK
                if off >= 1 << 31:  # negative: an ancillary load (only at ABS, as the kernel has it)
                    if mode != ABS:
                        return 0
                    anc = off - (1 << 32) - SKF_AD_OFF
                    if anc == SKF_AD_PROTOCOL:
                        v = protocol
                    elif anc == SKF_AD_PKTTYPE:
                        v = pkttype
                    else:
                        raise Invalid(f"ancillary load {anc} at {pc - 1}")
                else:
                    n = SIZE[size]
                    if off + n > len(packet):
                        return 0
                    v = int.from_bytes(packet[off:off + n], "big")
            if cls == LD:
                a = v
            else:
                x = v
        elif cls == ST:
            mem[k] = a
        elif cls == STX:
            mem[k] = x
        elif cls == ALU:
            a = ALU_OPS[code & 0xF0](a, x if code & X else k) & MASK
        elif cls == JMP:
            op = code & 0xF0
            if op == JA:
                pc += k
                continue
            b = x if code & X else k
            taken = {JEQ: a == b, JGT: a > b, JGE: a >= b, JSET: bool(a & b)}[op]
            pc += jt if taken else jf
        elif cls == RET:
            return a if code & RVAL_A else k
        else:  # MISC
            if code & 0x80:
                a = x
            else:
                x = a


def unpack(blob: bytes) -> list[tuple[int, int, int, int]]:
    """Packed struct sock_filter instructions back as tuples (host byte order)."""
    return [struct.unpack_from("=HBBI", blob, off) for off in range(0, len(blob), 8)]
