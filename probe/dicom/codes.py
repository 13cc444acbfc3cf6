"""DICOM Upper Layer code tables (PS3.8 §9.3), the one place they live.

Every numeric code seen on the wire is mapped to a canonical, lower-case, hyphenated name used in
metric labels, JSON records and reports. Codes outside the tables become ``unknown-<n>`` so that a
new or broken peer is visible instead of silently folded into a known reason.
"""

from __future__ import annotations

# PDU types, PS3.8 §9.3.1 Table 9-1 (and the following tables per PDU).
PDU_ASSOCIATE_RQ = 0x01
PDU_ASSOCIATE_AC = 0x02
PDU_ASSOCIATE_RJ = 0x03
PDU_P_DATA_TF = 0x04
PDU_RELEASE_RQ = 0x05
PDU_RELEASE_RP = 0x06
PDU_ABORT = 0x07

PDU_NAMES = {
    PDU_ASSOCIATE_RQ: "A-ASSOCIATE-RQ",
    PDU_ASSOCIATE_AC: "A-ASSOCIATE-AC",
    PDU_ASSOCIATE_RJ: "A-ASSOCIATE-RJ",
    PDU_P_DATA_TF: "P-DATA-TF",
    PDU_RELEASE_RQ: "A-RELEASE-RQ",
    PDU_RELEASE_RP: "A-RELEASE-RP",
    PDU_ABORT: "A-ABORT",
}

# Variable items, PS3.8 §9.3.2 Table 9-12, §9.3.3 Table 9-17 and Annex D.
ITEM_APPLICATION_CONTEXT = 0x10
ITEM_PRESENTATION_CONTEXT_RQ = 0x20
ITEM_PRESENTATION_CONTEXT_AC = 0x21
ITEM_ABSTRACT_SYNTAX = 0x30
ITEM_TRANSFER_SYNTAX = 0x40
ITEM_USER_INFORMATION = 0x50
SUBITEM_MAX_LENGTH = 0x51
SUBITEM_IMPLEMENTATION_CLASS_UID = 0x52
SUBITEM_ASYNC_OPERATIONS_WINDOW = 0x53
SUBITEM_ROLE_SELECTION = 0x54
SUBITEM_IMPLEMENTATION_VERSION_NAME = 0x55
SUBITEM_SOP_CLASS_EXTENDED = 0x56
SUBITEM_SOP_CLASS_COMMON_EXTENDED = 0x57
SUBITEM_USER_IDENTITY_RQ = 0x58
SUBITEM_USER_IDENTITY_AC = 0x59

# A-ASSOCIATE-RJ, PS3.8 §9.3.4 Table 9-21.
REJECT_RESULTS = {1: "rejected-permanent", 2: "rejected-transient"}
REJECT_SOURCES = {1: "service-user", 2: "service-provider-acse", 3: "service-provider-presentation"}
REJECT_REASONS = {
    1: {  # service-user
        1: "no-reason-given",
        2: "application-context-name-not-supported",
        3: "calling-ae-title-not-recognized",
        7: "called-ae-title-not-recognized",
    },
    2: {1: "no-reason-given", 2: "protocol-version-not-supported"},  # service-provider (ACSE)
    3: {1: "temporary-congestion", 2: "local-limit-exceeded"},  # service-provider (presentation)
}

# A-ABORT, PS3.8 §9.3.8 Table 9-26.
ABORT_SOURCES = {0: "service-user", 2: "service-provider"}
ABORT_REASONS = {
    0: "reason-not-specified",
    1: "unrecognized-pdu",
    2: "unexpected-pdu",
    4: "unrecognized-pdu-parameter",
    5: "unexpected-pdu-parameter",
    6: "invalid-pdu-parameter-value",
}
ABORT_REASON_USER = "not-significant"

# Presentation context result/reason in an A-ASSOCIATE-AC, PS3.8 §9.3.3.2 Table 9-18.
CONTEXT_RESULTS = {
    0: "acceptance",
    1: "user-rejection",
    2: "no-reason",
    3: "abstract-syntax-not-supported",
    4: "transfer-syntaxes-not-supported",
}

# User Identity Negotiation types, PS3.7 Annex D.3.3.7 Table D.3-14.
USER_IDENTITY_TYPES = {1: "username", 2: "username-passcode", 3: "kerberos", 4: "saml", 5: "jwt"}


def unknown(code: int) -> str:
    return f"unknown-{code}"


def reject_result_name(code: int) -> str:
    return REJECT_RESULTS.get(code) or unknown(code)


def reject_source_name(code: int) -> str:
    return REJECT_SOURCES.get(code) or unknown(code)


def reject_reason_name(source: int, reason: int) -> str:
    """The reason's meaning depends on its source (PS3.8 Table 9-21)."""
    return REJECT_REASONS.get(source, {}).get(reason) or unknown(reason)


def abort_source_name(code: int) -> str:
    return ABORT_SOURCES.get(code) or unknown(code)


def abort_reason_name(source: int, reason: int) -> str:
    """For a service-user abort the reason field is "not significant" (PS3.8 §9.3.8)."""
    if source == 0:
        return ABORT_REASON_USER
    return ABORT_REASONS.get(reason) or unknown(reason)


def context_result_name(code: int) -> str:
    return CONTEXT_RESULTS.get(code) or unknown(code)


def user_identity_type_name(code: int) -> str:
    return USER_IDENTITY_TYPES.get(code) or unknown(code)
