"""Golden DICOM Upper Layer PDUs (PS3.8 §9.3), hand-built field by field.

In the style of pynetdicom's ``tests/encoded_pdu_items.py``: each constant is the exact byte string
of one PDU, with a comment saying what it holds. Every field is written out explicitly (``struct``
with literal lengths, or literal bytes), so the goldens are our reading of PS3.8 and PS3.7 Annex D;
``tests/test_pdu.py::TestPynetdicomCrossCheck`` checks a few of them against pynetdicom's own
encoders so that they are not *only* our reading of the standard.

Values that must never leave the decoder (user identity primary/secondary fields, the server
response, P-DATA data values) contain the word ``SENTINEL`` so tests can look for leaks.
"""

from __future__ import annotations

import struct

# UIDs used below (lengths in brackets: the item length fields are written as literals).
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # [21] DICOM Application Context Name
VERIFICATION = "1.2.840.10008.1.1"  # [17] Verification SOP Class
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"  # [25]
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"  # [25]
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"  # [27]
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # [27] Study Root Q/R Information Model - FIND
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"  # [27] Patient Root Q/R Information Model - MOVE
STORAGE_SERVICE_CLASS = "1.2.840.10008.4.2"  # [17]
IMPLICIT_VR_LE = "1.2.840.10008.1.2"  # [17]
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"  # [19]
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"  # [19]
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"  # [22]
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"  # [22]
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.9.3811.3.0.4"  # [32]
IMPLEMENTATION_VERSION_RQ = "PROBE_TEST_01"  # [13]
IMPLEMENTATION_VERSION_AC = "PYNETDICOM_304"  # [14]

SENTINEL_USER = b"SENTINEL_USER"  # [13] user identity primary field (username)
SENTINEL_PASS = b"SENTINEL_PASS"  # [13] user identity secondary field (passcode)
SENTINEL_RESP = b"SENTINEL_RESP"  # [13] user identity server response


def _b(s: str) -> bytes:
    return s.encode("ascii")


############################# A-ASSOCIATE-RQ PDU #############################
# Called AET: ANY-SCP
# Calling AET: STORESCU
# Application Context Name: 1.2.840.10008.3.1.1.1
# Presentation Context Items:
#   ID 1: Verification; Implicit VR LE, Explicit VR LE
#   ID 3: CT Image Storage; Explicit VR LE, Implicit VR LE, Explicit VR BE
#   ID 5: MR Image Storage; JPEG Lossless SV1, Explicit VR LE
#   ID 7: Study Root FIND; Implicit VR LE
#   ID 9: Patient Root MOVE; JPEG 2000 Lossless, Implicit VR LE
# User Information (every RQ sub-item 0x51..0x58):
#   0x51 Maximum Length Received: 16384
#   0x52 Implementation Class UID: 1.2.826.0.1.3680043.9.3811.3.0.4
#   0x53 Asynchronous Operations Window: invoked 5, performed 3
#   0x54 SCP/SCU Role Selection: CT Image Storage SCU 0 SCP 1
#   0x54 SCP/SCU Role Selection: MR Image Storage SCU 1 SCP 1
#   0x55 Implementation Version Name: PROBE_TEST_01
#   0x56 SOP Class Extended Negotiation: Study Root FIND, info 01 01 01
#   0x57 SOP Class Common Extended Negotiation: MR Image Storage,
#        service class Storage, related general SOP class Enhanced MR
#   0x58 User Identity: type 2 (username and passcode), response requested,
#        primary "SENTINEL_USER", secondary "SENTINEL_PASS"
A_ASSOCIATE_RQ = b"".join([
    struct.pack(">BBI", 0x01, 0x00, 794),  # PDU type, reserved, PDU length 68 + 726
    struct.pack(">HH", 0x0001, 0x0000),  # protocol version, reserved
    b"ANY-SCP         ",  # called AE title (16 bytes, space padded)
    b"STORESCU        ",  # calling AE title
    bytes(32),  # reserved
    # Application Context Item (25 bytes)
    struct.pack(">BBH", 0x10, 0x00, 21), _b(APPLICATION_CONTEXT),
    # Presentation Context Item, ID 1 (73 bytes)
    struct.pack(">BBH", 0x20, 0x00, 69), struct.pack(">BBBB", 1, 0, 0, 0),
    struct.pack(">BBH", 0x30, 0x00, 17), _b(VERIFICATION),
    struct.pack(">BBH", 0x40, 0x00, 17), _b(IMPLICIT_VR_LE),
    struct.pack(">BBH", 0x40, 0x00, 19), _b(EXPLICIT_VR_LE),
    # Presentation Context Item, ID 3 (104 bytes)
    struct.pack(">BBH", 0x20, 0x00, 100), struct.pack(">BBBB", 3, 0, 0, 0),
    struct.pack(">BBH", 0x30, 0x00, 25), _b(CT_IMAGE_STORAGE),
    struct.pack(">BBH", 0x40, 0x00, 19), _b(EXPLICIT_VR_LE),
    struct.pack(">BBH", 0x40, 0x00, 17), _b(IMPLICIT_VR_LE),
    struct.pack(">BBH", 0x40, 0x00, 19), _b(EXPLICIT_VR_BE),
    # Presentation Context Item, ID 5 (86 bytes)
    struct.pack(">BBH", 0x20, 0x00, 82), struct.pack(">BBBB", 5, 0, 0, 0),
    struct.pack(">BBH", 0x30, 0x00, 25), _b(MR_IMAGE_STORAGE),
    struct.pack(">BBH", 0x40, 0x00, 22), _b(JPEG_LOSSLESS_SV1),
    struct.pack(">BBH", 0x40, 0x00, 19), _b(EXPLICIT_VR_LE),
    # Presentation Context Item, ID 7 (60 bytes)
    struct.pack(">BBH", 0x20, 0x00, 56), struct.pack(">BBBB", 7, 0, 0, 0),
    struct.pack(">BBH", 0x30, 0x00, 27), _b(STUDY_ROOT_FIND),
    struct.pack(">BBH", 0x40, 0x00, 17), _b(IMPLICIT_VR_LE),
    # Presentation Context Item, ID 9 (86 bytes)
    struct.pack(">BBH", 0x20, 0x00, 82), struct.pack(">BBBB", 9, 0, 0, 0),
    struct.pack(">BBH", 0x30, 0x00, 27), _b(PATIENT_ROOT_MOVE),
    struct.pack(">BBH", 0x40, 0x00, 22), _b(JPEG_2000_LOSSLESS),
    struct.pack(">BBH", 0x40, 0x00, 17), _b(IMPLICIT_VR_LE),
    # User Information Item (292 bytes)
    struct.pack(">BBH", 0x50, 0x00, 288),
    #   0x51 Maximum Length: 16384
    struct.pack(">BBHI", 0x51, 0x00, 4, 16384),
    #   0x52 Implementation Class UID
    struct.pack(">BBH", 0x52, 0x00, 32), _b(IMPLEMENTATION_CLASS_UID),
    #   0x53 Asynchronous Operations Window: invoked 5, performed 3
    struct.pack(">BBHHH", 0x53, 0x00, 4, 5, 3),
    #   0x54 Role Selection: CT, SCU role 0, SCP role 1
    struct.pack(">BBHH", 0x54, 0x00, 29, 25), _b(CT_IMAGE_STORAGE), b"\x00\x01",
    #   0x54 Role Selection: MR, SCU role 1, SCP role 1
    struct.pack(">BBHH", 0x54, 0x00, 29, 25), _b(MR_IMAGE_STORAGE), b"\x01\x01",
    #   0x55 Implementation Version Name
    struct.pack(">BBH", 0x55, 0x00, 13), _b(IMPLEMENTATION_VERSION_RQ),
    #   0x56 SOP Class Extended Negotiation: Study Root FIND, application information 01 01 01
    struct.pack(">BBHH", 0x56, 0x00, 32, 27), _b(STUDY_ROOT_FIND), b"\x01\x01\x01",
    #   0x57 SOP Class Common Extended Negotiation (sub-item version 0): MR, Storage,
    #        related general SOP class identification (29 bytes): Enhanced MR
    struct.pack(">BBHH", 0x57, 0x00, 77, 25), _b(MR_IMAGE_STORAGE),
    struct.pack(">H", 17), _b(STORAGE_SERVICE_CLASS),
    struct.pack(">HH", 29, 27), _b(ENHANCED_MR_IMAGE_STORAGE),
    #   0x58 User Identity RQ: type 2, positive response requested 1, primary, secondary
    struct.pack(">BBHBBH", 0x58, 0x00, 32, 2, 1, 13), SENTINEL_USER,
    struct.pack(">H", 13), SENTINEL_PASS,
])

# A minimal A-ASSOCIATE-RQ as sent by an echo SCU
# Called AET: ECHO-SCP, Calling AET: ECHOSCU
# Application Context Name: 1.2.840.10008.3.1.1.1
# Presentation Context ID 1: Verification; Implicit VR LE
# User Information: Maximum Length 0 (unlimited), Implementation Class UID
A_ASSOCIATE_RQ_ECHO = b"".join([
    struct.pack(">BBI", 0x01, 0x00, 191),  # 68 + 25 + 50 + 48
    struct.pack(">HH", 0x0001, 0x0000),
    b"ECHO-SCP        ",
    b"ECHOSCU         ",
    bytes(32),
    struct.pack(">BBH", 0x10, 0x00, 21), _b(APPLICATION_CONTEXT),
    struct.pack(">BBH", 0x20, 0x00, 46), struct.pack(">BBBB", 1, 0, 0, 0),
    struct.pack(">BBH", 0x30, 0x00, 17), _b(VERIFICATION),
    struct.pack(">BBH", 0x40, 0x00, 17), _b(IMPLICIT_VR_LE),
    struct.pack(">BBH", 0x50, 0x00, 44),
    struct.pack(">BBHI", 0x51, 0x00, 4, 0),
    struct.pack(">BBH", 0x52, 0x00, 32), _b(IMPLEMENTATION_CLASS_UID),
])

############################# A-ASSOCIATE-AC PDU #############################
# Called AET: ANY-SCP (echoed), Calling AET: STORESCU (echoed)
# Application Context Name: 1.2.840.10008.3.1.1.1
# Presentation Context Items (one per result/reason of PS3.8 Table 9-18):
#   ID 1: result 0 acceptance; Implicit VR LE
#   ID 3: result 1 user-rejection; Explicit VR LE (not significant)
#   ID 5: result 2 no-reason (provider rejection); Explicit VR LE
#   ID 7: result 3 abstract-syntax-not-supported; Implicit VR LE
#   ID 9: result 4 transfer-syntaxes-not-supported; Implicit VR LE
# User Information:
#   0x51 Maximum Length Received: 32768
#   0x52 Implementation Class UID: 1.2.826.0.1.3680043.9.3811.3.0.4
#   0x53 Asynchronous Operations Window: invoked 1, performed 1
#   0x54 SCP/SCU Role Selection: CT Image Storage SCU 0 SCP 1
#   0x55 Implementation Version Name: PYNETDICOM_304
#   0x59 User Identity AC: server response "SENTINEL_RESP"
A_ASSOCIATE_AC = b"".join([
    struct.pack(">BBI", 0x02, 0x00, 368),  # 68 + 300
    struct.pack(">HH", 0x0001, 0x0000),
    b"ANY-SCP         ",
    b"STORESCU        ",
    bytes(32),
    # Application Context Item (25 bytes)
    struct.pack(">BBH", 0x10, 0x00, 21), _b(APPLICATION_CONTEXT),
    # Presentation Context AC Items: ID, reserved, result/reason, reserved, transfer syntax
    struct.pack(">BBH", 0x21, 0x00, 25), struct.pack(">BBBB", 1, 0, 0, 0),
    struct.pack(">BBH", 0x40, 0x00, 17), _b(IMPLICIT_VR_LE),
    struct.pack(">BBH", 0x21, 0x00, 27), struct.pack(">BBBB", 3, 0, 1, 0),
    struct.pack(">BBH", 0x40, 0x00, 19), _b(EXPLICIT_VR_LE),
    struct.pack(">BBH", 0x21, 0x00, 27), struct.pack(">BBBB", 5, 0, 2, 0),
    struct.pack(">BBH", 0x40, 0x00, 19), _b(EXPLICIT_VR_LE),
    struct.pack(">BBH", 0x21, 0x00, 25), struct.pack(">BBBB", 7, 0, 3, 0),
    struct.pack(">BBH", 0x40, 0x00, 17), _b(IMPLICIT_VR_LE),
    struct.pack(">BBH", 0x21, 0x00, 25), struct.pack(">BBBB", 9, 0, 4, 0),
    struct.pack(">BBH", 0x40, 0x00, 17), _b(IMPLICIT_VR_LE),
    # User Information Item (126 bytes)
    struct.pack(">BBH", 0x50, 0x00, 122),
    struct.pack(">BBHI", 0x51, 0x00, 4, 32768),
    struct.pack(">BBH", 0x52, 0x00, 32), _b(IMPLEMENTATION_CLASS_UID),
    struct.pack(">BBHHH", 0x53, 0x00, 4, 1, 1),
    struct.pack(">BBHH", 0x54, 0x00, 29, 25), _b(CT_IMAGE_STORAGE), b"\x00\x01",
    struct.pack(">BBH", 0x55, 0x00, 14), _b(IMPLEMENTATION_VERSION_AC),
    #   0x59 User Identity AC: server response length, server response
    struct.pack(">BBHH", 0x59, 0x00, 15, 13), SENTINEL_RESP,
])

############################# A-ASSOCIATE-RJ PDU #############################
# PDU type 0x03, reserved, length 4, reserved, result, source, reason/diag.
# Keyed by (result, source, reason). Every combination of PS3.8 Table 9-21:
A_ASSOCIATE_RJ = {
    # rejected-permanent, service-user, no-reason-given
    (1, 1, 1): b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x01",
    # rejected-permanent, service-user, application-context-name-not-supported
    (1, 1, 2): b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x02",
    # rejected-permanent, service-user, calling-ae-title-not-recognized
    (1, 1, 3): b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x03",
    # rejected-permanent, service-user, called-ae-title-not-recognized
    (1, 1, 7): b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x07",
    # rejected-permanent, service-provider-acse, no-reason-given
    (1, 2, 1): b"\x03\x00\x00\x00\x00\x04\x00\x01\x02\x01",
    # rejected-permanent, service-provider-acse, protocol-version-not-supported
    (1, 2, 2): b"\x03\x00\x00\x00\x00\x04\x00\x01\x02\x02",
    # rejected-permanent, service-provider-presentation, temporary-congestion
    (1, 3, 1): b"\x03\x00\x00\x00\x00\x04\x00\x01\x03\x01",
    # rejected-permanent, service-provider-presentation, local-limit-exceeded
    (1, 3, 2): b"\x03\x00\x00\x00\x00\x04\x00\x01\x03\x02",
    # rejected-transient, service-user, no-reason-given
    (2, 1, 1): b"\x03\x00\x00\x00\x00\x04\x00\x02\x01\x01",
    # rejected-transient, service-user, application-context-name-not-supported
    (2, 1, 2): b"\x03\x00\x00\x00\x00\x04\x00\x02\x01\x02",
    # rejected-transient, service-user, calling-ae-title-not-recognized
    (2, 1, 3): b"\x03\x00\x00\x00\x00\x04\x00\x02\x01\x03",
    # rejected-transient, service-user, called-ae-title-not-recognized
    (2, 1, 7): b"\x03\x00\x00\x00\x00\x04\x00\x02\x01\x07",
    # rejected-transient, service-provider-acse, no-reason-given
    (2, 2, 1): b"\x03\x00\x00\x00\x00\x04\x00\x02\x02\x01",
    # rejected-transient, service-provider-acse, protocol-version-not-supported
    (2, 2, 2): b"\x03\x00\x00\x00\x00\x04\x00\x02\x02\x02",
    # rejected-transient, service-provider-presentation, temporary-congestion
    (2, 3, 1): b"\x03\x00\x00\x00\x00\x04\x00\x02\x03\x01",
    # rejected-transient, service-provider-presentation, local-limit-exceeded
    (2, 3, 2): b"\x03\x00\x00\x00\x00\x04\x00\x02\x03\x02",
}

# Codes outside Table 9-21 (reserved values, or garbage from a broken peer):
A_ASSOCIATE_RJ_UNKNOWN = {
    # result 0 (not defined), service-user, no-reason-given
    (0, 1, 1): b"\x03\x00\x00\x00\x00\x04\x00\x00\x01\x01",
    # result 3 (not defined), service-user, no-reason-given
    (3, 1, 1): b"\x03\x00\x00\x00\x00\x04\x00\x03\x01\x01",
    # rejected-permanent, source 0 (not defined), reason 1
    (1, 0, 1): b"\x03\x00\x00\x00\x00\x04\x00\x01\x00\x01",
    # rejected-permanent, source 4 (not defined), reason 1
    (1, 4, 1): b"\x03\x00\x00\x00\x00\x04\x00\x01\x04\x01",
    # rejected-permanent, service-user, reason 4 (reserved)
    (1, 1, 4): b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x04",
    # rejected-permanent, service-user, reason 10 (reserved)
    (1, 1, 10): b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x0a",
    # rejected-transient, service-provider-acse, reason 3 (not defined)
    (2, 2, 3): b"\x03\x00\x00\x00\x00\x04\x00\x02\x02\x03",
    # rejected-transient, service-provider-acse, reason 7 (a service-user reason code)
    (2, 2, 7): b"\x03\x00\x00\x00\x00\x04\x00\x02\x02\x07",
    # rejected-transient, service-provider-presentation, reason 0 (reserved)
    (2, 3, 0): b"\x03\x00\x00\x00\x00\x04\x00\x02\x03\x00",
    # rejected-transient, service-provider-presentation, reason 7 (reserved)
    (2, 3, 7): b"\x03\x00\x00\x00\x00\x04\x00\x02\x03\x07",
    # result 255, source 255, reason 255
    (255, 255, 255): b"\x03\x00\x00\x00\x00\x04\x00\xff\xff\xff",
}

############################# A-RELEASE-RQ/RP PDUs ###########################
# PDU type 0x05, reserved, length 4, 4 reserved bytes
A_RELEASE_RQ = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
# PDU type 0x06, reserved, length 4, 4 reserved bytes
A_RELEASE_RP = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"

############################# A-ABORT PDU #####################################
# PDU type 0x07, reserved, length 4, reserved, reserved, source, reason/diag.
# Keyed by (source, reason). Every combination of PS3.8 Table 9-26:
A_ABORT = {
    # service-user; reason not significant (0)
    (0, 0): b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00",
    # service-provider, reason-not-specified
    (2, 0): b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00",
    # service-provider, unrecognized-pdu
    (2, 1): b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x01",
    # service-provider, unexpected-pdu
    (2, 2): b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x02",
    # service-provider, unrecognized-pdu-parameter
    (2, 4): b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x04",
    # service-provider, unexpected-pdu-parameter
    (2, 5): b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x05",
    # service-provider, invalid-pdu-parameter-value
    (2, 6): b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06",
}

# Codes outside Table 9-26:
A_ABORT_UNKNOWN = {
    # service-user with a (non-significant) non-zero reason 2
    (0, 2): b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x02",
    # source 1 (reserved), reason 0
    (1, 0): b"\x07\x00\x00\x00\x00\x04\x00\x00\x01\x00",
    # source 3 (not defined), reason 1
    (3, 1): b"\x07\x00\x00\x00\x00\x04\x00\x00\x03\x01",
    # service-provider, reason 3 (reserved)
    (2, 3): b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x03",
    # service-provider, reason 7 (not defined)
    (2, 7): b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x07",
    # source 255, reason 255
    (255, 255): b"\x07\x00\x00\x00\x00\x04\x00\x00\xff\xff",
}

############################# P-DATA-TF PDUs ##################################
# C-STORE-RQ command set, Implicit VR Little Endian, group 0000 (112 bytes):
#   (0000,0000) UL CommandGroupLength 100
#   (0000,0002) UI AffectedSOPClassUID CT Image Storage (25 + NUL pad)
#   (0000,0100) US CommandField 0x0001 (C-STORE-RQ)
#   (0000,0110) US MessageID 7
#   (0000,0700) US Priority 0 (medium)
#   (0000,0800) US CommandDataSetType 0x0000 (data set present)
#   (0000,1000) UI AffectedSOPInstanceUID 1.2.3.4.5.6.7.8.9 (17 + NUL pad)
C_STORE_RQ_COMMAND = b"".join([
    struct.pack("<HHII", 0x0000, 0x0000, 4, 100),
    struct.pack("<HHI", 0x0000, 0x0002, 26), _b(CT_IMAGE_STORAGE), b"\x00",
    struct.pack("<HHIH", 0x0000, 0x0100, 2, 0x0001),
    struct.pack("<HHIH", 0x0000, 0x0110, 2, 7),
    struct.pack("<HHIH", 0x0000, 0x0700, 2, 0),
    struct.pack("<HHIH", 0x0000, 0x0800, 2, 0x0000),
    struct.pack("<HHI", 0x0000, 0x1000, 18), b"1.2.3.4.5.6.7.8.9\x00",
])

# Data set fragments (Implicit VR LE) holding patient data sentinels:
#   (0010,0010) PN PatientName "SENTINEL^PATIENT"
DATA_FRAGMENT_1 = struct.pack("<HHI", 0x0010, 0x0010, 16) + b"SENTINEL^PATIENT"  # 24 bytes
#   (0010,0020) LO PatientID "SENTINEL_ID1"
DATA_FRAGMENT_2 = struct.pack("<HHI", 0x0010, 0x0020, 12) + b"SENTINEL_ID1"  # 20 bytes

# P-DATA-TF with three PDVs, all on presentation context 3:
#   PDV 1: message control header 0x03 (command, last fragment), C_STORE_RQ_COMMAND (112 bytes)
#   PDV 2: message control header 0x00 (data, not last), DATA_FRAGMENT_1 (24 bytes)
#   PDV 3: message control header 0x02 (data, last fragment), DATA_FRAGMENT_2 (20 bytes)
P_DATA_TF = b"".join([
    struct.pack(">BBI", 0x04, 0x00, 174),  # (4+2+112) + (4+2+24) + (4+2+20)
    struct.pack(">IBB", 114, 3, 0x03), C_STORE_RQ_COMMAND,
    struct.pack(">IBB", 26, 3, 0x00), DATA_FRAGMENT_1,
    struct.pack(">IBB", 22, 3, 0x02), DATA_FRAGMENT_2,
])

# C-ECHO-RQ command set, Implicit VR Little Endian (68 bytes):
#   (0000,0000) UL CommandGroupLength 56
#   (0000,0002) UI AffectedSOPClassUID Verification (17 + NUL pad)
#   (0000,0100) US CommandField 0x0030 (C-ECHO-RQ)
#   (0000,0110) US MessageID 1
#   (0000,0800) US CommandDataSetType 0x0101 (no data set)
C_ECHO_RQ_COMMAND = b"".join([
    struct.pack("<HHII", 0x0000, 0x0000, 4, 56),
    struct.pack("<HHI", 0x0000, 0x0002, 18), _b(VERIFICATION), b"\x00",
    struct.pack("<HHIH", 0x0000, 0x0100, 2, 0x0030),
    struct.pack("<HHIH", 0x0000, 0x0110, 2, 1),
    struct.pack("<HHIH", 0x0000, 0x0800, 2, 0x0101),
])

# P-DATA-TF with the C-ECHO-RQ command split over two PDVs on presentation context 1:
#   PDV 1: message control header 0x01 (command, not last), first 30 command bytes
#   PDV 2: message control header 0x03 (command, last), remaining 38 command bytes
P_DATA_TF_ECHO_FRAGMENTED = b"".join([
    struct.pack(">BBI", 0x04, 0x00, 80),  # (6 + 30) + (6 + 38)
    struct.pack(">IBB", 32, 1, 0x01), C_ECHO_RQ_COMMAND[:30],
    struct.pack(">IBB", 40, 1, 0x03), C_ECHO_RQ_COMMAND[30:],
])

# P-DATA-TF carrying one large data PDV (pixel data, not last) on presentation context 5:
#   PDV: message control header 0x00, 1000 bytes "SENTINEL" repeated (8000 bits of "pixels")
PIXEL_FRAGMENT = b"SENTINEL" * 125
P_DATA_TF_PIXELS = b"".join([
    struct.pack(">BBI", 0x04, 0x00, 1006),
    struct.pack(">IBB", 1002, 5, 0x00), PIXEL_FRAGMENT,
])
