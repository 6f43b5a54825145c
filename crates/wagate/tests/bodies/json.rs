//! The values the body properties are made of: JSON as written (so it can hold what
//! `serde_json::Value` cannot), the hostile strings, numbers and keys, and the strategies
//! that combine them. The routes and the checks are in `bodies.rs`.

use std::fmt;

use proptest::prelude::*;

/// Where confined URLs point: nothing listens there.
pub const CLOSED: &str = "http://127.0.0.1:1/confined";

// ---------------------------------------------------------------------------------------
// JSON as written, so that it can hold what `serde_json::Value` cannot: numbers no f64 or
// i64 holds, duplicate keys, escapes a decoder must refuse.

#[derive(Clone)]
pub enum J {
    Null,
    Bool(bool),
    /// A number literal as written (not always valid JSON: `NaN`, `01`, `+1` ...).
    Num(String),
    Str(String),
    /// A string literal written as is, quotes included (lone surrogates, NUL escapes ...).
    Raw(&'static str),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    pub fn render(&self, out: &mut String) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => out.push_str(n),
            J::Str(s) => out.push_str(&serde_json::to_string(s).expect("strings serialize")),
            J::Raw(raw) => out.push_str(raw),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.render(out);
                }
                out.push(']');
            }
            J::Obj(fields) => {
                out.push('{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(key).expect("strings serialize"));
                    out.push(':');
                    value.render(out);
                }
                out.push('}');
            }
        }
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        self.render(&mut out);
        out
    }

    /// Every string in it that names another host, pointed at [`CLOSED`].
    pub fn confined(self) -> J {
        match self {
            J::Str(s) if leaves_this_machine(&s) => J::Str(CLOSED.into()),
            J::Arr(items) => J::Arr(items.into_iter().map(J::confined).collect()),
            J::Obj(fields) => J::Obj(fields.into_iter().map(|(k, v)| (k, v.confined())).collect()),
            other => other,
        }
    }
}

/// Whether the gateway could reach out to another machine with this string, as a URL it
/// fetches or posts webhooks to, or as a proxy it connects through.
pub fn leaves_this_machine(text: &str) -> bool {
    let url_host = reqwest::Url::parse(text).ok().and_then(|url| url.host_str().map(str::to_string));
    let proxy_host = wagate::engine::proxy::Proxy::parse(text).ok().map(|proxy| proxy.host);
    [url_host, proxy_host].into_iter().flatten().any(|host| host != "127.0.0.1")
}

/// A request body, shown (shortened) as the JSON text it is.
#[derive(Clone)]
pub enum Body {
    Json(J),
    Bytes(Vec<u8>),
}

impl Body {
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Body::Json(j) => j.text().into_bytes(),
            Body::Bytes(bytes) => bytes.clone(),
        }
    }

    /// Whether every handler must refuse it (400-499): it is not a JSON object at all. (The
    /// values are not looked at: a field the handler ignores may hold any JSON, `1e400` too.)
    pub fn must_be_refused(&self) -> bool {
        serde_json::from_slice::<std::collections::BTreeMap<String, serde::de::IgnoredAny>>(&self.bytes()).is_err()
    }
}

impl fmt::Debug for J {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&Body::Json(self.clone()), f)
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = String::from_utf8_lossy(&self.bytes()).to_string();
        let short: String = text.chars().take(600).collect();
        let more = if short.len() < text.len() { format!(" ... ({} bytes)", text.len()) } else { String::new() };
        write!(f, "{short}{more}")
    }
}

// ---------------------------------------------------------------------------------------
// Values.

/// Strings that mean something to some parser of the API.
pub const HOSTILE: &[&str] = &[
    "",
    " ",
    "\u{0}",
    "\t\r\n",
    "null",
    "true",
    "0",
    "-1",
    "../../etc/passwd",
    "%00",
    "%zz",
    "\u{202e}gnp.exe",
    "\u{feff}",
    "\u{2028}\u{2029}",
    "👍",
    "👍🏽",
    "🏳️‍🌈",
    "👍👍👍👍👍👍👍👍👍👍👍",
    "e\u{301}",
    "ᄀᄀᄀ각ᆨᆨ",
    "F",
    "Q",
    "nope",
    "..",
    ".",
    "a b",
    "15554000002",
    "+1 (555) 400-0002",
    "1 555 400 0002",
    "15554000002@s.whatsapp.net",
    "15554000002:1@s.whatsapp.net",
    "15554000001",
    "999999999999999",
    "9999999999999999",
    "1234567",
    "123456",
    "12345678901234567890",
    "120363025246125486",
    "120363025246125486@g.us",
    "15551234567-1612345678",
    "15551234567-1612345678@g.us",
    "-",
    "1-",
    "-1@g.us",
    "1-2-3@g.us",
    "@",
    "a@",
    "@b",
    "a@b",
    "a@b@c",
    "1@lid",
    "1:2:3@s.whatsapp.net",
    "1.5@s.whatsapp.net",
    "x@g.us",
    "status@broadcast",
    "http://127.0.0.1:1/x",
    "https://127.0.0.1:1/",
    "http://127.0.0.1",
    "http://",
    "http:///x",
    "https://",
    "ftp://127.0.0.1/x",
    "file:///etc/passwd",
    "socks5://127.0.0.1:1",
    "socks5://u:p@127.0.0.1:1",
    "socks5://@127.0.0.1:1",
    "socks5://127.0.0.1",
    "socks5://127.0.0.1:99999",
    "http://127.0.0.1:1/path",
    "https://127.0.0.1:1",
    "socks5h://%zz@127.0.0.1:1",
    "data:image/png;base64,aGVsbG8=",
    "data:;base64,",
    "aGVsbG8=",
    "aGVsbG8",
    "aGVs\nbG8=",
    "====",
    "=",
    "not base64!",
    "image/jpeg",
    "image/png",
    "video/mp4",
    "audio/ogg; codecs=opus",
    "application/pdf",
    "text/html",
    "a/b/c",
    "/",
    "image/",
    "voice_note.ogg",
    "a.pdf",
    "BEGIN:VCARD\nVERSION:3.0\nFN:X\nEND:VCARD",
    "BEGIN:VCARD",
    "END:VCARD\nBEGIN:VCARD",
    "native",
    "compat",
    "messages.upsert",
    "whsec_aGVsbG8=",
];

/// Field names of every body the API reads, and some that only look like them.
pub const KEYS: &[&str] = &[
    "to",
    "text",
    "document",
    "image",
    "video",
    "audio",
    "sticker",
    "location",
    "contact",
    "reaction",
    "reply_to",
    "queue",
    "url",
    "base64",
    "mimetype",
    "filename",
    "caption",
    "voice",
    "latitude",
    "longitude",
    "name",
    "address",
    "phone",
    "vcard",
    "message_id",
    "emoji",
    "phones",
    "id",
    "webhook",
    "proxy",
    "secret",
    "events",
    "token",
    "format",
    "sessionId",
    "webhookUrl",
    "webhookToken",
    "receiver",
    "message",
    "media",
    "data",
    "groupId",
    "session_id",
    "Text",
    "__proto__",
    "",
];

/// Number literals, JSON's and some that are not.
pub const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "0.0",
    "1",
    "-1",
    "1e309",
    "-1e309",
    "1e-400",
    "90",
    "90.0000001",
    "-90",
    "-90.5",
    "180",
    "180.0000001",
    "-181",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "123456789012345678901234567890",
    "1.7976931348623157e308",
    "5e-324",
    "01",
    "+1",
    ".5",
    "1.",
    "NaN",
    "Infinity",
    "-Infinity",
];

/// String literals as written, escapes included.
pub const RAW_STRINGS: &[&str] = &[
    r#""\ud800""#,
    r#""\udfff\ud800""#,
    r#""\u0000""#,
    r#""\uD83D\uDC4D""#,
    r#""\x41""#,
    r#""\u12""#,
    "\"\u{1}\"",
    "\"unterminated",
];

pub fn text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => ".{0,40}",
        2 => "[ -~]{0,40}",
        4 => prop::sample::select(HOSTILE).prop_map(String::from),
        1 => "[\\x00-\\x1f\\x7f\u{80}-\u{9f}\u{2028}\u{2029}\u{202e}\u{feff}\u{fffd}]{1,20}",
        1 => (prop::sample::select(vec!["a", "👍", "\u{0}", " ", "9"]), prop::sample::select(vec![255usize, 256, 4096, 65_535, 65_536, 65_537, 70_000]))
            .prop_map(|(s, n)| s.repeat(n)),
    ]
    .boxed()
}

pub fn number() -> BoxedStrategy<String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_filter("JSON has no NaN or infinity", |f| f.is_finite()).prop_map(|f| format!("{f:e}")),
        (-200.0..200.0f64).prop_map(|f| f.to_string()),
        prop::sample::select(NUMBERS).prop_map(String::from),
        "-?[0-9]{1,40}(\\.[0-9]{1,20})?([eE][-+]?[0-9]{1,4})?",
    ]
    .boxed()
}

pub fn key() -> BoxedStrategy<String> {
    prop_oneof![4 => prop::sample::select(KEYS).prop_map(String::from), 1 => text()].boxed()
}

/// Any JSON value, nested a few levels, with keys the API knows.
pub fn any_json() -> BoxedStrategy<J> {
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        number().prop_map(J::Num),
        text().prop_map(J::Str),
        prop::sample::select(RAW_STRINGS).prop_map(J::Raw),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(J::Arr),
            prop::collection::vec((key(), inner), 0..6).prop_map(J::Obj),
        ]
    })
    .boxed()
}

/// Mostly a string from `strings`, sometimes a value of another type.
pub fn string_of(strings: BoxedStrategy<String>) -> BoxedStrategy<J> {
    prop_oneof![
        40 => strings.prop_map(J::Str),
        2 => any_json(),
        1 => prop::sample::select(RAW_STRINGS).prop_map(J::Raw),
    ]
    .boxed()
}

/// A string from `pool` (values that get far into the handlers) or any string.
pub fn one_of(pool: &[&'static str]) -> BoxedStrategy<J> {
    string_of(prop_oneof![2 => prop::sample::select(pool.to_vec()).prop_map(String::from), 1 => text()].boxed())
}

pub fn string() -> BoxedStrategy<J> {
    string_of(text())
}

pub fn boolean() -> BoxedStrategy<J> {
    prop_oneof![8 => any::<bool>().prop_map(J::Bool), 1 => any_json()].boxed()
}

pub fn num() -> BoxedStrategy<J> {
    prop_oneof![8 => number().prop_map(J::Num), 1 => any_json()].boxed()
}

/// Mostly short arrays, sometimes long ones.
pub fn array_of(item: BoxedStrategy<J>, max: usize) -> BoxedStrategy<J> {
    prop_oneof![
        8 => prop::collection::vec(item.clone(), 0..4).prop_map(J::Arr),
        2 => prop::collection::vec(item, 0..max).prop_map(J::Arr),
        1 => any_json(),
    ]
    .boxed()
}

/// Phone numbers as people write them: of the other linked phone, of this one, of nobody.
pub const PHONES: &[&str] = &[
    "15554000002",
    "+1 555 400 0002",
    "+1 (555) 400-0002",
    "1.555.400.0002",
    "15554000001",
    "999999999999999",
    "1234567",
    "+91 98765-43210",
    "0123456789",
];

pub fn phone() -> BoxedStrategy<J> {
    string_of(
        prop_oneof![
            5 => prop::sample::select(PHONES).prop_map(String::from),
            2 => text(),
            1 => "[0-9 +().-]{0,20}",
        ]
        .boxed(),
    )
}

/// Recipients: phones, JIDs and group ids, well and badly formed.
pub fn recipient() -> BoxedStrategy<J> {
    const JIDS: &[&str] = &[
        "15554000002@s.whatsapp.net",
        "15554000002:0@s.whatsapp.net",
        "15554000002:1@s.whatsapp.net",
        "120363025246125486",
        "120363025246125486@g.us",
        "15551234567-1612345678",
        "status@broadcast",
        "1@lid",
        "a@b",
        "1:x@s.whatsapp.net",
        "1@s.whatsapp.net:2",
        "15554000002@S.WHATSAPP.NET",
        "1@newsletter",
        "0@c.us",
        "1:x@g.us",
        "120363025246125486:1@g.us",
    ];
    // Mostly the other linked phone, so that many requests go all the way to WhatsApp.
    let linked = one_of(&["15554000002", "+1 555 400 0002", "15554000002@s.whatsapp.net"]);
    prop_oneof![3 => linked, 2 => phone(), 2 => one_of(JIDS)].boxed()
}

/// Webhook and file URLs on this machine, and strings that are not quite URLs.
pub fn url() -> BoxedStrategy<J> {
    one_of(&[
        "http://127.0.0.1:1/hook",
        "https://127.0.0.1:1/hook",
        "http://127.0.0.1:1",
        "HTTP://127.0.0.1:1/x",
        "http://",
        "http:///hook",
        "http://127.0.0.1:1/a b",
        "ftp://127.0.0.1:1/x",
        "127.0.0.1:1/hook",
    ])
}

/// A field of an object: present with probability `p`.
pub type Field = BoxedStrategy<Option<(String, J)>>;

pub fn field(name: &'static str, p: f64, value: BoxedStrategy<J>) -> Field {
    prop::option::weighted(p, value.prop_map(move |v| (name.to_string(), v))).boxed()
}

/// An object of some of `fields` in any order, now and then with a stranger or a field
/// given twice; sometimes not an object at all.
pub fn object(fields: Vec<Field>) -> BoxedStrategy<J> {
    object_with(fields, Just(Vec::new()).boxed())
}

/// As [`object`], with the fields `more` makes too.
pub fn object_with(fields: Vec<Field>, more: BoxedStrategy<Vec<(String, J)>>) -> BoxedStrategy<J> {
    let extra = prop::option::weighted(0.05, (key(), any_json()));
    let built = (fields, more, extra, any::<bool>(), any::<prop::sample::Index>())
        .prop_map(|(fields, more, extra, duplicate, which)| {
            let mut fields: Vec<(String, J)> = fields.into_iter().flatten().chain(more).chain(extra).collect();
            if duplicate && !fields.is_empty() && which.index(16) == 0 {
                let again = fields[which.index(fields.len())].clone();
                fields.push(again);
            }
            fields
        })
        .prop_shuffle()
        .prop_map(J::Obj);
    prop_oneof![20 => built, 1 => any_json()].boxed()
}
