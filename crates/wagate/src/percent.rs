//! Percent-encoding for text that goes into a URL path segment or an RFC 5987 header value
//! (`filename*=`): RFC 3986's unreserved characters stay, every other byte is escaped. And
//! its reverse, for a value read from a URL.

pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// `%XX` escapes back to bytes (a `%` not followed by two hex digits stays as it is);
/// bytes that are not UTF-8 become U+FFFD.
pub fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (other, _) => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_unreserved_characters_stay() {
        assert_eq!(super::encode("3EB0A1"), "3EB0A1");
        assert_eq!(super::encode("a/b?c#d é"), "a%2Fb%3Fc%23d%20%C3%A9");
        assert_eq!(super::encode(".."), "..");
    }

    #[test]
    fn decoding_undoes_encoding() {
        for text in ["a/b?c#d é", "/etc/ssl/ca.pem", "100%", "%zz%2"] {
            assert_eq!(super::decode(&super::encode(text)), text);
        }
        assert_eq!(super::decode("%2Fetc%2fca.pem"), "/etc/ca.pem");
        assert_eq!(super::decode("100%"), "100%", "a lone % stays");
        assert_eq!(super::decode("%+1"), "%+1", "no sign accepted as a hex digit");
    }
}
