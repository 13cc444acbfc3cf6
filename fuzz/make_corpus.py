"""Build the seed corpus for fuzz_pipeline.py from the committed real captures (Ethernet ones)."""

import hashlib
import struct
from pathlib import Path

import dpkt

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "fuzz" / "corpus"
MAX_INPUT = 64 * 1024  # keep seeds small: the fuzzer mutates them


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    captures = ROOT / "tests" / "fixtures" / "captures"
    for pcap in sorted(captures.glob("*.pcap")) + sorted(captures.glob("tls/*.pcap")):
        with open(pcap, "rb") as f:
            reader = dpkt.pcap.Reader(f)
            if reader.datalink() != dpkt.pcap.DLT_EN10MB:
                continue
            data = b""
            for _ts, buf in reader:
                chunk = struct.pack(">H", len(buf)) + buf
                if len(data) + len(chunk) > MAX_INPUT:
                    break
                data += chunk
        name = f"{pcap.stem}-{hashlib.sha1(data).hexdigest()[:8]}"
        (OUT / name).write_bytes(data)
        print(name, len(data))


if __name__ == "__main__":
    main()
