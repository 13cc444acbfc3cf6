"""Independent oracle for TLS captures (DICOM over TLS), built on tshark.

It shares no code with the probe, nor with the recorder
(tests/fixtures/record_tls_fixtures.py), and only its tshark check with
tests/tshark_oracle.py: Wireshark's TLS and X.509 dissectors
do the TCP reassembly and the parsing; this module only groups what they
report by TCP connection (``tcp.stream``).

    tls_connections(pcap, tls_ports=(2762,)) -> list of dicts, one per TCP
        connection whose server port is in tls_ports, in the order of their
        first frame (the SYN), in the shape of the "connections" of a
        tests/fixtures/captures/tls/*.truth.json (see record_tls_fixtures.py):
          client, client_port, server ("ip:port"), outcome, version,
          cipher_iana, cipher_code, sni, client_hello, alert, alert_code,
          alert_sent_by, server_cert, client_cert, server_chain, client_chain
        plus what the wire shows besides:
          stream, offered_versions (ClientHello supported_versions, else its
          legacy version), alerts (every alert record: dir, level, desc, name,
          clear), encrypted_records ({"client": [lengths], "server": [...]}:
          TLS 1.3 opaque records after the ServerHello), app_data_records
          (count per direction of content type 23 records), ccs (per
          direction), fin / rst (per direction), first_bytes (hex of the
          first 6 payload bytes per direction), inferred (list of the fields
          that are inferred rather than read, see below)
    compare(truth, oracle_connections) -> list of problems (empty: agree)
    tshark_available() -> bool

Names: versions "SSLv3", "TLSv1.0" .. "TLSv1.3"; the cipher suite's IANA name
and the alert names come from tshark's own value strings (``tshark -G
values``: "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"; "Unknown CA" ->
"unknown_ca", i.e. lower case with "_" for blanks, which gives the RFC 8446
names).  Certificates: {"subject_cn", "subject_o", "issuer_cn", "issuer_o",
"not_after"} with not_after in Unix seconds UTC, converted from tshark's
UTCTime ("2036-01-01 00:00:00 (UTC)") or GeneralizedTime ("Jan  1, 2051
00:00:00.000000000 UTC") text; *_cert is the first certificate of the
Certificate message (the leaf), *_chain all of them in order.  A Certificate
message with no certificate (a client without one) gives null.

How it is read:

* ``tshark -r F -n -d tcp.port==P,tls -T fields -E occurrence=a`` with the
  fields in _FIELDS (tcp.stream, ip.src/ipv6.src, tcp.srcport, tcp.dstport,
  tcp.len, tcp.flags.syn/ack/fin/reset, tcp.payload,
  tls.record.content_type, tls.record.opaque_type, tls.record.length,
  tls.handshake.type, tls.handshake.version,
  tls.handshake.extensions.supported_version,
  tls.handshake.extensions_server_name, tls.handshake.ciphersuite,
  tls.alert_message.level, tls.alert_message.desc).  In one frame the records
  are listed in order, their lengths in tls.record.length; a record's type is
  tls.record.content_type for the clear ones and tls.record.opaque_type for
  the TLS 1.3 encrypted ones, and in a TLS stream the clear records of one
  direction always come before its encrypted ones, so the two lists are
  joined in that order.  A handshake message or record that spans several
  segments is reported in the frame that completes it.
* Certificates: ``-Y "tls.handshake.type == 11" -T pdml`` (a tree, so
  issuer, subject and validity of each certificate stay apart; -T fields
  would merge UTCTime and GeneralizedTime values of several certificates
  into two unordered lists): every tls.handshake.certificate, its
  x509af.issuer and x509af.subject (x509if.oid 2.5.4.3 = CN, 2.5.4.10 = O,
  values from x509sat.uTF8String / printableString / ...), x509af.notAfter
  (x509af.utcTime or x509af.generalizedTime).
* version: the ServerHello's supported_versions extension, else its legacy
  version; null without a ServerHello.  cipher: the ServerHello's suite.
  sni: the ClientHello's server_name.  client_hello: the client's first
  payload bytes are a TLS handshake record holding a ClientHello
  (16 03 xx .. .. 01).
* alert / alert_code / alert_sent_by: the first fatal alert seen in clear
  (tls.alert_message.desc is only decoded for clear alerts; an encrypted TLS
  <= 1.2 alert is a content type 21 record without it).

What tshark cannot know without the keys, so these fields are *inferred*
(and listed in "inferred"):

* outcome for TLS <= 1.2: "established" when both sides sent
  ChangeCipherSpec (their Finished follows, encrypted) and no fatal alert was
  seen in clear; else "failed".
* outcome for TLS 1.3, where the end of the handshake is encrypted:
  "established" when the server sent an encrypted record that is not a bare
  alert (19 bytes: 2 bytes of alert, 1 of inner content type, 16 of AEAD tag)
  after the client's first encrypted record (its Finished, or its
  Certificate / CertificateVerify / Finished).  A client that rejects the
  server's certificate sends one 19-byte record (the alert) and closes; the
  server of an established connection sends its NewSessionTickets and the
  application data after the client's Finished.
* alert_sent_by for a failed TLS 1.3 handshake with no clear alert: the side
  whose only encrypted records after the ServerHello are a 19-byte record
  (the client's single record, or a server's lone 19-byte record after the
  client's flight).  Its name (unknown_ca, ...) is not visible: alert stays
  null; the truth keeps it as "encrypted_alert", which compare() ignores.
"""
from __future__ import annotations

import calendar
import functools
import re
import subprocess
import time
import xml.etree.ElementTree as ET

from tshark_oracle import tshark_has  # the same availability check as the DICOM oracle

TSHARK = "tshark"

_FIELDS = [
    "frame.number", "tcp.stream", "ip.src", "ipv6.src", "tcp.srcport", "ip.dst",
    "ipv6.dst", "tcp.dstport", "tcp.len", "tcp.flags.syn", "tcp.flags.ack",
    "tcp.flags.fin", "tcp.flags.reset", "tcp.payload",
    "tls.record.content_type", "tls.record.opaque_type", "tls.record.length",
    "tls.handshake.type", "tls.handshake.version",
    "tls.handshake.extensions.supported_version", "tls.handshake.extensions_server_name",
    "tls.handshake.ciphersuite", "tls.alert_message.level", "tls.alert_message.desc",
]
_AGG = "\x1f"

VERSION_NAMES = {0x0300: "SSLv3", 0x0301: "TLSv1.0", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2",
                 0x0304: "TLSv1.3"}
ENCRYPTED_ALERT_LEN = 19
OID_CN, OID_O = "2.5.4.3", "2.5.4.10"

# what compare() checks, connection by connection
COMPARED = ("client", "client_port", "server", "outcome", "version", "cipher_iana",
            "cipher_code", "sni", "client_hello", "alert", "alert_code", "alert_sent_by",
            "server_cert", "client_cert", "server_chain", "client_chain")


def tshark_available() -> bool:
    """True if a working tshark with the TLS and X.509 dissectors is on PATH."""
    return tshark_has("tls", "x509af")


@functools.lru_cache(maxsize=1)
def _value_strings():
    """{field: {value: text}} for the TLS fields whose names we report."""
    r = subprocess.run([TSHARK, "-G", "values"], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"tshark -G values failed: {r.stderr}")
    want = {"tls.alert_message.desc", "tls.handshake.ciphersuite"}
    out = {w: {} for w in want}
    for line in r.stdout.splitlines():
        cols = line.split("\t")
        if len(cols) >= 4 and cols[0] == "V" and cols[1] in want:
            out[cols[1]][int(cols[2], 0)] = cols[3]
    return out


def alert_name(code):
    text = _value_strings()["tls.alert_message.desc"].get(code)
    return re.sub(r"\s+", "_", text.strip()).lower() if text else f"alert_{code}"


def cipher_name(code):
    return _value_strings()["tls.handshake.ciphersuite"].get(code)


def _tshark(pcap, ports, extra):
    cmd = [TSHARK, "-r", str(pcap), "-n", "-o", "tcp.desegment_tcp_streams:TRUE",
           "-o", "tls.desegment_ssl_records:TRUE",
           "-o", "tls.desegment_ssl_application_data:TRUE"]
    for p in sorted(set(int(p) for p in ports)):
        cmd += ["-d", f"tcp.port=={p},tls"]
    r = subprocess.run(cmd + extra, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"tshark failed ({r.returncode}): {r.stderr}")
    return r.stdout


def _frames(pcap, ports):
    extra = ["-T", "fields", "-E", "separator=\t", "-E", "occurrence=a",
             "-E", f"aggregator={_AGG}", "-E", "quote=n"]
    for f in _FIELDS:
        extra += ["-e", f]
    for line in _tshark(pcap, ports, extra).splitlines():
        cols = line.split("\t")
        if len(cols) != len(_FIELDS):
            raise RuntimeError(f"unexpected tshark line: {line!r}")
        yield {f: (c.split(_AGG) if c != "" else []) for f, c in zip(_FIELDS, cols)}


def _int(v):
    return int(v, 0)


def parse_x509_time(text):
    """tshark's text of a UTCTime ("2036-01-01 00:00:00 (UTC)") or GeneralizedTime
    ("Jan  1, 2051 00:00:00.000000000 UTC") -> Unix seconds UTC."""
    t = text.strip()
    m = re.match(r"^(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.\d+)? \(UTC\)$", t)
    if m:
        return calendar.timegm(tuple(int(x) for x in m.groups()) + (0, 0, 0))
    m = re.match(r"^(\w{3})\s+(\d{1,2}), (\d{4}) (\d\d):(\d\d):(\d\d)(?:\.\d+)? UTC$", t)
    if m:
        mon = time.strptime(m.group(1), "%b").tm_mon
        return calendar.timegm((int(m.group(3)), mon, int(m.group(2)), int(m.group(4)),
                                int(m.group(5)), int(m.group(6)), 0, 0, 0))
    raise ValueError(f"unknown X.509 time text from tshark: {text!r}")


def _fields_named(elem, name):
    return [e for e in elem.iter("field") if e.get("name") == name]


def _name_of(elem):
    """{oid: value} of an x509af.issuer / x509af.subject tree."""
    out = {}
    for rdn in _fields_named(elem, "x509if.RelativeDistinguishedName_item_element"):
        oid = next((e.get("show") for e in rdn.iter("field") if e.get("name") == "x509if.oid"),
                   None)
        val = None
        for e in rdn.iter("field"):
            n = e.get("name", "")
            if n.startswith("x509sat.") and n not in ("x509sat.DirectoryString",) and \
                    e.get("show") is not None and not list(e):
                val = e.get("show")
        if oid and oid not in out:
            out[oid] = val
    return out


def _certificate(cert_elem):
    issuer = next(iter(_fields_named(cert_elem, "x509af.issuer")), None)
    subject = next(iter(_fields_named(cert_elem, "x509af.subject")), None)
    not_after = next(iter(_fields_named(cert_elem, "x509af.notAfter")), None)
    if issuer is None or subject is None or not_after is None:
        return None
    iss, sub = _name_of(issuer), _name_of(subject)
    t = next((e for e in not_after.iter("field")
              if e.get("name") in ("x509af.utcTime", "x509af.generalizedTime")), None)
    return {"subject_cn": sub.get(OID_CN), "subject_o": sub.get(OID_O),
            "issuer_cn": iss.get(OID_CN), "issuer_o": iss.get(OID_O),
            "not_after": parse_x509_time(t.get("show")) if t is not None else None}


def _certificate_messages(pcap, ports):
    """{(stream, src ip, src port): [[cert, ...] per Certificate message]}"""
    out = {}
    xml = _tshark(pcap, ports, ["-Y", "tls.handshake.type == 11", "-T", "pdml"])
    if not xml.strip():
        return out
    root = ET.fromstring(xml)
    for pkt in root.iter("packet"):
        vals = {}
        for f in pkt.iter("field"):
            n = f.get("name")
            if n in ("tcp.stream", "ip.src", "ipv6.src", "tcp.srcport") and n not in vals:
                vals[n] = f.get("show")
        key = (int(vals["tcp.stream"]), vals.get("ip.src") or vals.get("ipv6.src"),
               int(vals["tcp.srcport"]))
        for hs in _fields_named(pkt, "tls.handshake"):
            htype = next((e.get("show") for e in hs if e.get("name") == "tls.handshake.type"),
                         None)
            if htype != "11":
                continue
            certs = [_certificate(c) for c in _fields_named(hs, "tls.handshake.certificate")]
            out.setdefault(key, []).append([c for c in certs if c is not None])
    return out


def _new_conn(stream):
    return {"stream": stream, "client": None, "client_port": None, "server": None,
            "_server_ip": None, "_server_port": None, "_first_frame": None,
            "records": [], "offered_versions": [], "sni": None,
            "_hello": None, "alerts": [], "ccs": {"client": 0, "server": 0},
            "fin": {"client": False, "server": False}, "rst": {"client": False, "server": False},
            "first_bytes": {"client": None, "server": None}, "_syn": None}


def tls_connections(pcap, tls_ports=(2762,)):
    ports = {int(p) for p in tls_ports}
    conns = {}
    frames = list(_frames(pcap, ports))
    # endpoints first: the SYN sender is the client; else the side on a TLS port
    for fr in frames:
        if not fr["tcp.stream"]:
            continue
        sport, dport = int(fr["tcp.srcport"][0]), int(fr["tcp.dstport"][0])
        if sport not in ports and dport not in ports:
            continue
        st = int(fr["tcp.stream"][0])
        c = conns.setdefault(st, _new_conn(st))
        src = (fr["ip.src"] or fr["ipv6.src"])[0]
        dst = (fr["ip.dst"] or fr["ipv6.dst"])[0]
        if c["_first_frame"] is None:
            c["_first_frame"] = int(fr["frame.number"][0])
        syn = fr["tcp.flags.syn"][0] in ("1", "True")
        ack = fr["tcp.flags.ack"][0] in ("1", "True")
        if syn and not ack and c["_syn"] is None:
            c["_syn"] = (src, sport, dst, dport)
        if c["client"] is None:
            if c["_syn"]:
                cli, cport, srv, svport = c["_syn"]
            elif dport in ports:
                cli, cport, srv, svport = src, sport, dst, dport
            else:
                cli, cport, srv, svport = dst, dport, src, sport
            c.update(client=cli, client_port=cport, _server_ip=srv, _server_port=svport)
    for fr in frames:
        if not fr["tcp.stream"]:
            continue
        st = int(fr["tcp.stream"][0])
        c = conns.get(st)
        if c is None:
            continue
        src = (fr["ip.src"] or fr["ipv6.src"])[0]
        d = "client" if (src, int(fr["tcp.srcport"][0])) == (c["client"], c["client_port"]) \
            else "server"
        fno = int(fr["frame.number"][0])
        if fr["tcp.flags.fin"][0] in ("1", "True"):
            c["fin"][d] = True
        if fr["tcp.flags.reset"][0] in ("1", "True"):
            c["rst"][d] = True
        if c["first_bytes"][d] is None and fr["tcp.len"] and int(fr["tcp.len"][0]) > 0 \
                and fr["tcp.payload"]:
            c["first_bytes"][d] = fr["tcp.payload"][0].replace(":", "")[:12]
        ctypes = [_int(x) for x in fr["tls.record.content_type"]]
        otypes = [_int(x) for x in fr["tls.record.opaque_type"]]
        lengths = [_int(x) for x in fr["tls.record.length"]]
        types = [(t, False) for t in ctypes] + [(t, True) for t in otypes]
        if len(types) != len(lengths):
            raise RuntimeError(f"frame {fno}: {len(types)} record types, {len(lengths)} lengths")
        for (t, opaque), n in zip(types, lengths):
            c["records"].append({"frame": fno, "dir": d, "type": t, "length": n,
                                 "opaque": opaque})
            if t == 20 and not opaque:
                c["ccs"][d] += 1
        htypes = [_int(x) for x in fr["tls.handshake.type"]]
        hvers = [_int(x) for x in fr["tls.handshake.version"]]
        svers = [_int(x) for x in fr["tls.handshake.extensions.supported_version"]]
        if d == "client" and 1 in htypes:
            c["offered_versions"] = [VERSION_NAMES.get(v, f"0x{v:04x}")
                                     for v in (svers or hvers[:1])]
            if fr["tls.handshake.extensions_server_name"]:
                c["sni"] = fr["tls.handshake.extensions_server_name"][0]
        if d == "server" and 2 in htypes:
            suites = [_int(x) for x in fr["tls.handshake.ciphersuite"]]
            v = svers[-1] if svers else (hvers[-1] if hvers else None)
            c["_hello"] = {"version": v, "cipher": suites[-1] if suites else None,
                           "frame": fno}
        levels = [_int(x) for x in fr["tls.alert_message.level"]]
        descs = [_int(x) for x in fr["tls.alert_message.desc"]]
        for lv, de in zip(levels, descs):
            c["alerts"].append({"frame": fno, "dir": d, "level": lv, "desc": de,
                                "name": alert_name(de), "clear": True})
        n_alert_records = sum(1 for t, o in types if t == 21 and not o)
        for _ in range(n_alert_records - len(descs)):
            c["alerts"].append({"frame": fno, "dir": d, "level": None, "desc": None,
                                "name": None, "clear": False})
    certs = _certificate_messages(pcap, ports)
    out = []
    for c in sorted(conns.values(), key=lambda x: x["_first_frame"]):
        out.append(_finish(c, certs))
    return out


def _finish(c, certs):
    hello = c["_hello"]
    version = VERSION_NAMES.get(hello["version"]) if hello and hello["version"] else None
    code = hello["cipher"] if hello else None
    e = {"stream": c["stream"], "client": c["client"], "client_port": c["client_port"],
         "server": (f"[{c['_server_ip']}]:{c['_server_port']}" if ":" in c["_server_ip"]
                    else f"{c['_server_ip']}:{c['_server_port']}"),
         "version": version, "cipher_code": code,
         "cipher_iana": cipher_name(code) if code is not None else None,
         "sni": c["sni"], "offered_versions": c["offered_versions"]}
    fb = c["first_bytes"]["client"]
    e["client_hello"] = bool(fb and len(fb) >= 12 and fb[:4] == "1603" and fb[10:12] == "01")
    fatal = [a for a in c["alerts"] if a["clear"] and a["level"] == 2]
    a = fatal[0] if fatal else None
    e.update(alert=a["name"] if a else None, alert_code=a["desc"] if a else None,
             alert_sent_by=a["dir"] if a else None)
    inferred = ["outcome"]
    recs = c["records"]
    if version == "TLSv1.3":
        enc = {d: [r for r in recs if r["dir"] == d and r["opaque"] and r["type"] == 23]
               for d in ("client", "server")}
        first_cli = enc["client"][0]["frame"] if enc["client"] else None
        after = [r for r in enc["server"] if first_cli is not None and r["frame"] > first_cli]
        established = (not fatal and first_cli is not None and
                       any(r["length"] != ENCRYPTED_ALERT_LEN for r in after))
        if not established and not fatal:
            if [r["length"] for r in enc["client"]] == [ENCRYPTED_ALERT_LEN] and not after:
                e["alert_sent_by"] = "client"
                inferred.append("alert_sent_by")
            elif after and all(r["length"] == ENCRYPTED_ALERT_LEN for r in after):
                e["alert_sent_by"] = "server"
                inferred.append("alert_sent_by")
    else:
        established = (hello is not None and not fatal and c["ccs"]["client"] > 0
                       and c["ccs"]["server"] > 0)
    e["outcome"] = "established" if established else "failed"
    e["inferred"] = inferred
    e["server_chain"] = e["client_chain"] = None
    for who, ip, port in (("server", c["_server_ip"], c["_server_port"]),
                          ("client", c["client"], c["client_port"])):
        msgs = certs.get((c["stream"], ip, port), [])
        chain = msgs[0] if msgs else None
        e[f"{who}_chain"] = chain or None
        e[f"{who}_cert"] = chain[0] if chain else None
    e["alerts"] = c["alerts"]
    e["encrypted_records"] = {d: [r["length"] for r in recs if r["dir"] == d and r["opaque"]]
                              for d in ("client", "server")}
    e["app_data_records"] = {d: sum(1 for r in recs if r["dir"] == d and r["type"] == 23)
                             for d in ("client", "server")}
    e["ccs"] = c["ccs"]
    e["fin"], e["rst"] = c["fin"], c["rst"]
    e["first_bytes"] = c["first_bytes"]
    return e


def compare(truth, oracle):
    """Problems between a truth document's "connections" and tls_connections()."""
    problems = []
    tconns = truth["connections"]
    if len(tconns) != len(oracle):
        problems.append(f"tshark sees {len(oracle)} TLS-port connections, truth has "
                        f"{len(tconns)}")
    for i, (t, o) in enumerate(zip(tconns, oracle)):
        for f in COMPARED:
            if f not in t:
                continue  # not recorded in this truth
            if f == "client_port" and t[f] is None:
                continue  # no peer reported it
            if t[f] != o.get(f):
                problems.append(f"connection #{i} (stream {o['stream']}) {f}: tshark "
                                f"{o.get(f)!r}, truth {t[f]!r}")
    return problems
