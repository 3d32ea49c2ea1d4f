//! Netlink's wire format, shared by the rtnetlink (routes, addresses) and nf_tables code:
//! message headers, attributes, and the parsing of received datagrams. Native byte order,
//! 4-byte alignment, as the kernel defines them. Pure bytes; sockets live in `apply`.

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

    #[test]
    fn bad_lengths_are_errors() {
        assert!(parse_messages(&[1, 2, 3]).is_err());
        let mut m = message(1, 0, 1, &[]);
        m[0] = 200;
        assert!(parse_messages(&m).is_err());
        assert!(parse_attrs(&[8, 0, 1, 0, 1]).is_err());
    }
}
