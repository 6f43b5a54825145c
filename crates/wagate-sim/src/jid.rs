//! Device addresses as the simulator stores them, and their JID forms on the wire.

use std::fmt;

/// One device of one account: device 0 is the phone, companions are 1, 2, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceAddr {
    pub phone: u64,
    pub device: u16,
}

impl fmt::Display for DeviceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}@s.whatsapp.net", self.phone, self.device)
    }
}

pub fn lid_jid_string(lid: u64, device: u16) -> String {
    format!("{lid}:{device}@lid")
}

/// Accepts "15551234567", "+1 555-123-4567" and similar, returning the digits as a number.
pub fn parse_phone(text: &str) -> Option<u64> {
    let digits: String = text.chars().filter(|c| !matches!(c, ' ' | '-' | '+' | '(' | ')' | '.')).collect();
    if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A JID as given to the control API: `user[:device]@server`, where the user is a phone
/// number (`s.whatsapp.net`) or a LID (`lid`). Device defaults to 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnyDeviceJid {
    Pn { phone: u64, device: u16 },
    Lid { lid: u64, device: u16 },
}

pub fn parse_device_jid(text: &str) -> Option<AnyDeviceJid> {
    let (user_part, server) = text.trim().split_once('@')?;
    let (user, device) = match user_part.split_once(':') {
        Some((user, device)) => (user, device.parse().ok()?),
        None => (user_part, 0),
    };
    // An agent suffix ("user.0:1") is not used by these servers.
    let user: u64 = user.parse().ok()?;
    match server {
        "s.whatsapp.net" | "c.us" => Some(AnyDeviceJid::Pn { phone: user, device }),
        "lid" => Some(AnyDeviceJid::Lid { lid: user, device }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_in_common_formats_parse() {
        assert_eq!(parse_phone("+91 98765-43210"), Some(919876543210));
        assert_eq!(parse_phone("15551234567"), Some(15551234567));
        assert_eq!(parse_phone("abc"), None);
        assert_eq!(parse_phone(""), None);
        assert_eq!(parse_phone("1234567890123456"), None);
    }

    #[test]
    fn device_jids_parse() {
        assert_eq!(
            parse_device_jid("15551234567:2@s.whatsapp.net"),
            Some(AnyDeviceJid::Pn { phone: 15551234567, device: 2 })
        );
        assert_eq!(parse_device_jid("777:1@lid"), Some(AnyDeviceJid::Lid { lid: 777, device: 1 }));
        assert_eq!(
            parse_device_jid("15551234567@s.whatsapp.net"),
            Some(AnyDeviceJid::Pn { phone: 15551234567, device: 0 })
        );
        assert_eq!(parse_device_jid("x@g.us"), None);
        assert_eq!(parse_device_jid("nonsense"), None);
    }
}
