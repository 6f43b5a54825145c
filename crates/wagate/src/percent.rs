//! Percent-encoding for text that goes into a URL path segment or an RFC 5987 header value
//! (`filename*=`): RFC 3986's unreserved characters stay, every other byte is escaped.

pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_unreserved_characters_stay() {
        assert_eq!(super::encode("3EB0A1"), "3EB0A1");
        assert_eq!(super::encode("a/b?c#d é"), "a%2Fb%3Fc%23d%20%C3%A9");
        assert_eq!(super::encode(".."), "..");
    }
}
