//! The key-value log's record format: a set or a delete per record, appended to a
//! shard's pending buffer and replayed when a store opens.

use super::{OP_DELETE, OP_SET};

pub(crate) fn put_set(out: &mut Vec<u8>, key: &str, value: &[u8], expires_ms: u64) {
    out.push(OP_SET);
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&expires_ms.to_be_bytes());
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value);
}

pub(crate) fn put_delete(out: &mut Vec<u8>, key: &str) {
    out.push(OP_DELETE);
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(key.as_bytes());
}

/// One decoded log operation.
pub(crate) enum Op<'a> {
    Set(&'a str, &'a [u8], u64),
    Delete(&'a str),
}

/// The operations of one log record; `None` where it is malformed.
pub(crate) fn ops(mut rec: &[u8]) -> impl Iterator<Item = Option<Op<'_>>> {
    fn take<'a>(rec: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = rec.split_at_checked(n)?;
        *rec = rest;
        Some(head)
    }
    let mut failed = false;
    std::iter::from_fn(move || {
        if rec.is_empty() || failed {
            return None;
        }
        let op = (|| {
            let kind = take(&mut rec, 1)?[0];
            let klen = u16::from_be_bytes(take(&mut rec, 2)?.try_into().ok()?) as usize;
            let key = std::str::from_utf8(take(&mut rec, klen)?).ok()?;
            match kind {
                OP_SET => {
                    let exp = u64::from_be_bytes(take(&mut rec, 8)?.try_into().ok()?);
                    let vlen = u32::from_be_bytes(take(&mut rec, 4)?.try_into().ok()?) as usize;
                    Some(Op::Set(key, take(&mut rec, vlen)?, exp))
                }
                OP_DELETE => Some(Op::Delete(key)),
                _ => None,
            }
        })();
        failed = op.is_none();
        Some(op)
    })
}

/// Decode a record and encode again what decoded: the same bytes, up to the first
/// malformed operation (the fuzz target's property).
pub(crate) fn round_trip(rec: &[u8]) {
    let mut out = Vec::new();
    for op in ops(rec) {
        match op {
            Some(Op::Set(k, v, e)) => put_set(&mut out, k, v, e),
            Some(Op::Delete(k)) => put_delete(&mut out, k),
            None => break,
        }
    }
    assert!(rec.starts_with(&out), "a record re-encoded differently");
}
