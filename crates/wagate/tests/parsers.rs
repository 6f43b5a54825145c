//! Parsers of outside input never panic and never accept what they must refuse, whatever
//! they are given (property tests: a few hundred generated cases each, every run).

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderValue, Method};
use proptest::prelude::*;
use wagate::engine::{MediaKind, MediaRef};
use wagate::http::trust::{check_not_cross_site, Access, Cidr};

/// Printable ASCII with the characters that matter to each parser well represented.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,80}", "[@/:.a-z0-9\\[\\]%=;, -]{0,60}", "(socks5|http|https)://[a-z:@%0-9.]{0,30}(:[0-9]{0,6})?",]
}

fn media(direct_path: String, file_length: u64) -> MediaRef {
    MediaRef {
        kind: MediaKind::Document,
        direct_path,
        media_key: vec![0; 32],
        file_sha256: vec![0; 32],
        file_enc_sha256: vec![0; 32],
        file_length,
    }
}

proptest! {
    #[test]
    fn proxy_urls(url in text()) {
        let _ = wagate::engine::proxy::Proxy::parse(&url);
    }

    #[test]
    fn retry_after_values(value in text()) {
        let _ = wagate::webhook::retry::retry_after(&value, chrono::Utc::now());
    }

    #[test]
    fn session_ids_accepted_are_safe_file_names(id in text()) {
        if wagate::session::validate_id(&id).is_ok() {
            prop_assert!(!id.is_empty() && id.len() <= 64);
            prop_assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')));
            prop_assert!(!id.bytes().all(|b| b == b'.'));
        }
    }

    #[test]
    fn jids(jid in text()) {
        let _ = wagate::engine::phone_of_jid(&jid);
        let _ = wagate::engine::non_device(&jid);
    }

    #[test]
    fn a_downloadable_direct_path_names_no_other_host(path in text(), length in any::<u64>()) {
        if media(path.clone(), length).check_downloadable().is_ok() {
            prop_assert!(path.starts_with('/'));
            prop_assert!(!path.contains('@') && !path.contains("//") && !path.contains('\\'));
            prop_assert!(length <= 2 * 1024 * 1024 * 1024);
        }
    }

    #[test]
    fn address_ranges(range in text(), address in any::<[u8; 16]>()) {
        if let Ok(cidr) = range.parse::<Cidr>() {
            let _ = cidr.contains(IpAddr::from(address));
        }
    }

    #[test]
    fn request_headers(host in text(), origin in text(), forwarded in text(), kind in text(), method in 0usize..4) {
        let mut headers = HeaderMap::new();
        for (name, value) in [("host", &host), ("origin", &origin), ("x-forwarded-for", &forwarded), ("content-type", &kind)] {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        }
        let access = Access {
            allowed_hosts: vec!["wa.example.com".into()],
            trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
            ..Default::default()
        };
        let caller = access.caller("127.0.0.1".parse().unwrap(), &headers);
        if caller.local {
            // Local only when nothing was forwarded and the host is this machine.
            prop_assert!(!headers.contains_key("x-forwarded-for"));
        }
        let _ = access.check_host(&headers);
        let method = [Method::GET, Method::POST, Method::PUT, Method::DELETE][method].clone();
        let _ = check_not_cross_site(&method, &headers);
    }
}
