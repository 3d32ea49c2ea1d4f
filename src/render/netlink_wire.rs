//! Netlink's wire format, shared by the rtnetlink (routes, addresses) and nf_tables code:
//! message headers, attributes, and the parsing of received datagrams. Native byte order,
//! 4-byte alignment, as the kernel defines them. Pure bytes; sockets live in `driver`.

/// `sizeof(struct nlmsghdr)`, already 4-byte aligned.
pub const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct nlattr)`.
pub const NLA_HDRLEN: usize = 4;
/// The two top bits of `nla_type` are flags (nested, network byte order), not the type.
pub const NLA_TYPE_MASK: u16 = 0x3fff;

/// Rounds up to netlink's 4-byte alignment.
pub fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends one attribute (header, data, padding).
pub fn put_attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = NLA_HDRLEN + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len() + align4(len) - len, 0);
}

/// A complete message: header (port id 0, the kernel fills in ours) + body, padded.
pub fn message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + body.len();
    let mut buf = Vec::with_capacity(align4(len));
    buf.extend_from_slice(&(len as u32).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(body);
    buf.resize(align4(len), 0);
    buf
}

/// One message out of a received datagram.
#[derive(Debug)]
pub struct Msg {
    /// `nlmsg_type`: the message type (`NLMSG_ERROR`, `RTM_NEWROUTE`, nf_tables types, …).
    pub kind: u16,
    /// `nlmsg_flags` (`NLM_F_MULTI`, …).
    pub flags: u16,
    /// `nlmsg_seq`: the sequence number of the request it answers.
    pub seq: u32,
    /// The body after the header, up to `nlmsg_len`.
    pub payload: Vec<u8>,
}

/// A native-endian u16 at byte offset `at`, or `None` past the end.
pub fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

/// A native-endian u32 at byte offset `at`, or `None` past the end.
pub fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

/// The errno field that starts `NLMSG_ERROR` (and, for dumps, `NLMSG_DONE`) payloads; 0 for
/// an acknowledgement.
pub fn error_code(payload: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(payload.get(..4)?.try_into().ok()?))
}

/// `NLMSG_ERROR` and `NLMSG_DONE`, the control messages that end a request or a dump.
pub const NLMSG_ERROR: u16 = 2;
/// See [`NLMSG_ERROR`].
pub const NLMSG_DONE: u16 = 3;
/// In a dump reply: the kernel's object list changed while the dump was running, so the dump
/// may have skipped or repeated entries.
pub const NLM_F_DUMP_INTR: u16 = 0x10;
/// In an `NLMSG_ERROR`: the original request's body was left out (`NETLINK_CAP_ACK`).
pub const NLM_F_CAPPED: u16 = 0x100;
/// In an `NLMSG_ERROR`: extended-ack attributes follow (`NETLINK_EXT_ACK`).
pub const NLM_F_ACK_TLVS: u16 = 0x200;
/// Extended-ack attributes (`enum nlmsgerr_attrs`): the kernel's error text, and the byte
/// offset of the offending attribute in the request.
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGERR_ATTR_OFFS: u16 = 2;

/// What one message of a dump reply means for the dump it belongs to.
#[derive(Debug, PartialEq, Eq)]
pub enum DumpStep {
    /// An object of the dump (its payload is the message's).
    Item,
    /// `NLMSG_DONE` without an error: the dump is complete.
    Done,
    /// `NLMSG_DONE` or `NLMSG_ERROR` carrying this (negative) errno: the dump failed.
    Failed(i32),
    /// A control message to skip (`NLMSG_NOOP`, a zero-errno acknowledgement).
    Skip,
}

/// Classifies one message of a dump reply. `NLMSG_DONE` may carry the dump's own errno (the
/// kernel puts it there when a dump callback fails part-way); an empty `NLMSG_DONE` payload
/// is a plain end. A truncated `NLMSG_ERROR` is an error, never a panic.
pub fn dump_step(msg: &Msg) -> Result<DumpStep, String> {
    match msg.kind {
        NLMSG_DONE => match error_code(&msg.payload) {
            Some(code) if code < 0 => Ok(DumpStep::Failed(code)),
            _ => Ok(DumpStep::Done),
        },
        NLMSG_ERROR => match error_code(&msg.payload) {
            Some(0) => Ok(DumpStep::Skip),
            Some(code) => Ok(DumpStep::Failed(code)),
            None => Err("truncated NLMSG_ERROR".into()),
        },
        // NLMSG_NOOP and the reserved control types below NLMSG_MIN_TYPE (0x10).
        kind if kind < 0x10 => Ok(DumpStep::Skip),
        _ => Ok(DumpStep::Item),
    }
}

/// What an extended acknowledgement adds to an `NLMSG_ERROR`: the kernel's own text and
/// the offset (from the start of the request's header) of the attribute it objects to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtAck {
    /// `NLMSGERR_ATTR_MSG`, e.g. "Chain not found".
    pub message: Option<String>,
    /// `NLMSGERR_ATTR_OFFS`.
    pub offset: Option<u32>,
}

/// The extended-ack attributes of an `NLMSG_ERROR` message (flags and payload as received);
/// empty when there are none or they cannot be read — the errno alone still stands.
pub fn ext_ack(flags: u16, payload: &[u8]) -> ExtAck {
    if flags & NLM_F_ACK_TLVS == 0 {
        return ExtAck::default();
    }
    // errno, then the request's header, then (unless capped) the request's body.
    let request_len = if flags & NLM_F_CAPPED != 0 {
        Some(NLMSG_HDRLEN)
    } else {
        u32_at(payload, 4).map(|n| n as usize)
    };
    let Some(start) = request_len.and_then(|n| n.checked_add(4)).map(align4) else {
        return ExtAck::default();
    };
    let Some(Ok(attrs)) = payload.get(start..).map(parse_attrs) else {
        return ExtAck::default();
    };
    let mut ack = ExtAck::default();
    for (kind, value) in attrs {
        match kind {
            NLMSGERR_ATTR_MSG => {
                let text = value.split(|&b| b == 0).next().unwrap_or(value);
                let text = String::from_utf8_lossy(text).trim().to_string();
                if !text.is_empty() {
                    ack.message = Some(text);
                }
            }
            NLMSGERR_ATTR_OFFS => ack.offset = u32_at(value, 0),
            _ => {}
        }
    }
    ack
}

/// Splits a datagram into its messages; a length that does not fit is an error, never a
/// panic.
pub fn parse_messages(buf: &[u8]) -> Result<Vec<Msg>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let len = u32_at(buf, at).ok_or("truncated message header")? as usize;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            return Err(format!(
                "message length {len} at offset {at} of a {}-byte datagram",
                buf.len()
            ));
        }
        out.push(Msg {
            kind: u16_at(buf, at + 4).ok_or("truncated message header")?,
            flags: u16_at(buf, at + 6).ok_or("truncated message header")?,
            seq: u32_at(buf, at + 8).ok_or("truncated message header")?,
            payload: buf[at + NLMSG_HDRLEN..at + len].to_vec(),
        });
        at += align4(len);
    }
    Ok(out)
}

/// The attributes that follow a fixed header, as (type, payload) pairs.
pub fn parse_attrs(buf: &[u8]) -> Result<Vec<(u16, &[u8])>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLA_HDRLEN <= buf.len() {
        let len = usize::from(u16_at(buf, at).ok_or("truncated attribute")?);
        let kind = u16_at(buf, at + 2).ok_or("truncated attribute")? & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || at + len > buf.len() {
            return Err(format!("attribute {kind} has length {len} at offset {at}"));
        }
        out.push((kind, &buf[at + NLA_HDRLEN..at + len]));
        at += align4(len);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_attributes_round_trip() {
        let mut body = vec![7, 0, 0, 0];
        put_attr(&mut body, 3, b"lo\0");
        put_attr(&mut body, 4, &1337u32.to_ne_bytes());
        let mut datagram = message(20, 5, 42, &body);
        datagram.extend(message(3, 0, 43, &0i32.to_ne_bytes()));
        let msgs = parse_messages(&datagram).unwrap();
        assert_eq!((msgs[0].kind, msgs[0].flags, msgs[0].seq), (20, 5, 42));
        let attrs = parse_attrs(&msgs[0].payload[4..]).unwrap();
        assert_eq!(
            attrs,
            vec![(3, &b"lo\0"[..]), (4, &1337u32.to_ne_bytes()[..])]
        );
        assert_eq!(error_code(&msgs[1].payload), Some(0));
    }

    /// An `NLMSG_ERROR` as the kernel sends it with `NETLINK_CAP_ACK`/`NETLINK_EXT_ACK`:
    /// errno, the request's header (its body too unless capped), then the attributes.
    fn error_reply(errno: i32, request: &[u8], capped: bool, attrs: &[u8]) -> Msg {
        let mut payload = errno.to_ne_bytes().to_vec();
        payload.extend_from_slice(if capped {
            &request[..NLMSG_HDRLEN]
        } else {
            request
        });
        payload.resize(align4(payload.len()), 0);
        payload.extend_from_slice(attrs);
        let mut flags = 0;
        if capped {
            flags |= NLM_F_CAPPED;
        }
        if !attrs.is_empty() {
            flags |= NLM_F_ACK_TLVS;
        }
        Msg {
            kind: NLMSG_ERROR,
            flags,
            seq: 1,
            payload,
        }
    }

    #[test]
    fn extended_acks_give_the_kernels_text_and_offset() {
        let request = message(0xa06, 0x405, 9, &[1, 0, 0, 0, 8, 0, 1, 0, 7, 7, 7]);
        let mut attrs = Vec::new();
        put_attr(&mut attrs, NLMSGERR_ATTR_MSG, b"Chain not found\0");
        put_attr(&mut attrs, NLMSGERR_ATTR_OFFS, &24u32.to_ne_bytes());
        let want = ExtAck {
            message: Some("Chain not found".into()),
            offset: Some(24),
        };
        for capped in [true, false] {
            let reply = error_reply(-2, &request, capped, &attrs);
            assert_eq!(
                ext_ack(reply.flags, &reply.payload),
                want,
                "capped {capped}"
            );
            assert_eq!(dump_step(&reply), Ok(DumpStep::Failed(-2)));
        }
        // Without the flag the bytes after the request are not attributes.
        let reply = error_reply(-2, &request, true, &attrs);
        assert_eq!(ext_ack(0, &reply.payload), ExtAck::default());
        // A request length pointing past the end, or garbage attributes: nothing, no panic.
        let mut reply = error_reply(-2, &request, false, &attrs);
        reply.payload[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(ext_ack(reply.flags, &reply.payload), ExtAck::default());
        assert_eq!(ext_ack(NLM_F_ACK_TLVS, &[1, 2, 3]), ExtAck::default());
    }

    #[test]
    fn a_dump_ends_with_done_and_fails_on_the_errno_it_carries() {
        let msg = |kind, payload: &[u8]| Msg {
            kind,
            flags: 0,
            seq: 1,
            payload: payload.to_vec(),
        };
        assert_eq!(dump_step(&msg(NLMSG_DONE, &[])), Ok(DumpStep::Done));
        assert_eq!(
            dump_step(&msg(NLMSG_DONE, &0i32.to_ne_bytes())),
            Ok(DumpStep::Done)
        );
        assert_eq!(
            dump_step(&msg(NLMSG_DONE, &(-16i32).to_ne_bytes())),
            Ok(DumpStep::Failed(-16))
        );
        assert_eq!(
            dump_step(&msg(NLMSG_ERROR, &0i32.to_ne_bytes())),
            Ok(DumpStep::Skip)
        );
        assert_eq!(
            dump_step(&msg(NLMSG_ERROR, &(-1i32).to_ne_bytes())),
            Ok(DumpStep::Failed(-1))
        );
        assert!(dump_step(&msg(NLMSG_ERROR, &[0, 0])).is_err());
        assert_eq!(dump_step(&msg(1, &[])), Ok(DumpStep::Skip), "NLMSG_NOOP");
        assert_eq!(dump_step(&msg(0xa00, &[])), Ok(DumpStep::Item));
    }

    use proptest::prelude::*;

    /// A datagram of a few real-looking messages (a dump item, an extended error, a done).
    fn sample_datagram() -> Vec<u8> {
        let mut body = vec![1, 0, 0, 0];
        put_attr(&mut body, 1, b"istio-proxy-nat\0");
        put_attr(&mut body, 2, &0u32.to_be_bytes());
        let mut datagram = message(0xa00, 2, 5, &body);
        let mut attrs = Vec::new();
        put_attr(&mut attrs, NLMSGERR_ATTR_MSG, b"Table exists\0");
        put_attr(&mut attrs, NLMSGERR_ATTR_OFFS, &20u32.to_ne_bytes());
        let err = error_reply(-17, &datagram.clone(), true, &attrs);
        datagram.extend(message(err.kind, err.flags, 6, &err.payload));
        datagram.extend(message(NLMSG_DONE, 2, 5, &0i32.to_ne_bytes()));
        datagram
    }

    /// Every parser of received bytes in this module, on one input: none may panic.
    fn parse_everything(bytes: &[u8], flags: u16) {
        let _ = parse_attrs(bytes);
        let _ = error_code(bytes);
        let _ = ext_ack(flags, bytes);
        if let Ok(msgs) = parse_messages(bytes) {
            for msg in msgs {
                let _ = dump_step(&msg);
                let _ = ext_ack(msg.flags, &msg.payload);
                let _ = parse_attrs(&msg.payload);
                if let Some(body) = msg.payload.get(4..) {
                    let _ = parse_attrs(body);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512),
                                       flags in any::<u16>()) {
            parse_everything(&bytes, flags);
        }

        #[test]
        fn mutated_replies_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
                                       cut in any::<usize>(),
                                       flags in any::<u16>()) {
            let mut bytes = sample_datagram();
            for (at, value) in flips {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            parse_everything(&bytes, flags);
            bytes.truncate(cut % (bytes.len() + 1));
            parse_everything(&bytes, flags);
        }
    }

    #[test]
    fn bad_lengths_are_errors() {
        assert!(parse_messages(&[1, 2, 3]).is_err());
        let mut m = message(1, 0, 1, &[]);
        m[0] = 200;
        assert!(parse_messages(&m).is_err());
        assert!(parse_attrs(&[8, 0, 1, 0, 1]).is_err());
    }
}
