//! HTTP/1.1 header rules both sides of the proxy share: which headers belong to one
//! hop, comma-separated tokens, reading values from parsed header lines, and writing
//! lengths without allocating.

/// Headers that belong to one hop and are never forwarded (RFC 9110, 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Whether the header `name` (any case) belongs to one hop.
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    is_one_of(name, &HOP_BY_HOP)
}

pub(crate) fn is_one_of(name: &str, names: &[&str]) -> bool {
    names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Whether the comma-separated `value` names `token` (case-insensitively).
pub(crate) fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether a header name is listed in the `Connection` header of `fields` (and so
/// meant for one hop); checks nothing when there is none, the common case.
pub(crate) fn named_in_connection<'a>(
    fields: &'a [httparse::Header<'a>],
) -> impl Fn(&str) -> bool + 'a {
    let any = values(fields, "connection").next().is_some();
    move |name| any && values(fields, "connection").any(|v| has_token(v, name))
}

/// `n` in decimal, written into `digits` (no allocation on the hot path).
pub(crate) fn itoa(digits: &mut [u8; 20], mut n: usize) -> &[u8] {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &digits[at..];
        }
    }
}

/// The values of the header `name` (any case) among `fields`.
pub(crate) fn values<'a>(
    fields: &'a [httparse::Header<'a>],
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    fields
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}
