//! Accounts and their devices: who may log in, with which keys, and the 4-companion limit.

use std::collections::BTreeMap;
use std::sync::Arc;

use wacore_libsignal::protocol::KeyPair;

use crate::crypto::{generate_key_pair, random_bytes, random_u32};
use crate::jid::{AnyDeviceJid, DeviceAddr};
use crate::phone::{PhoneSignal, Recipient};

/// WhatsApp links at most four companion devices to one phone.
pub const MAX_COMPANIONS: usize = 4;

/// One prekey a device uploaded, handed out to other clients that start a session with it.
#[derive(Debug, Clone)]
pub struct PreKey {
    pub id: u32,
    pub public: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct SignedPreKey {
    pub id: u32,
    pub public: Vec<u8>,
    pub signature: Vec<u8>,
}

/// The Signal identity of a device, as uploaded at pairing and with prekeys.
#[derive(Debug, Clone, Default)]
pub struct SignalKeys {
    pub registration_id: u32,
    pub identity: Vec<u8>,
    pub signed_prekey: Option<SignedPreKey>,
    pub prekeys: Vec<PreKey>,
}

#[derive(Debug, Clone)]
pub struct Device {
    pub id: u16,
    /// The Noise static key the device proved at pairing; logins must present it again.
    pub noise_key: [u8; 32],
    pub key_index: u32,
    pub platform: String,
    pub signal: SignalKeys,
    /// False between the scan and the client's valid `pair-device-sign`.
    pub confirmed: bool,
    /// Whether the phone has shared its app-state key with this device yet.
    pub key_shared: bool,
    /// Whether the phone has sent this device the account's history (profiled accounts).
    pub history_sent: bool,
}

pub struct Account {
    pub phone: u64,
    pub lid: u64,
    /// The phone's identity key: signs device identities and key-index lists.
    pub identity: KeyPair,
    /// ADV account id shared by all its device identities.
    pub raw_id: u32,
    next_device: u16,
    next_key_index: u32,
    pub devices: BTreeMap<u16, Device>,
    /// The phone's Signal sessions with its companions; async because libsignal's stores are.
    pub phone_signal: Arc<tokio::sync::Mutex<PhoneSignal>>,
    /// The phone's app-state sync key (id, key data): it shares it with every companion
    /// and encrypts the account's app state with it.
    pub app_state_key: (Vec<u8>, [u8; 32]),
    /// What the account holds besides its devices, fixed when its first device links
    /// (`None` until then). An empty profile is today's bare account.
    pub profile: Option<Arc<crate::profile::ProfiledAccount>>,
}

impl Account {
    fn new(phone: u64) -> Self {
        let identity = generate_key_pair();
        let app_state_key = (random_bytes::<6>().to_vec(), random_bytes::<32>());
        Self {
            phone_signal: Arc::new(tokio::sync::Mutex::new(PhoneSignal::new(
                &identity,
                random_u32() & 0x3fff,
                app_state_key.clone(),
            ))),
            app_state_key,
            profile: None,
            phone,
            // LIDs are opaque numbers unrelated to the phone number; derive a stable one so
            // logs are readable, with a prefix that cannot collide with real numbers here.
            lid: 100_000_000_000_000 + phone % 100_000_000_000_000,
            identity,
            raw_id: random_u32(),
            next_device: 1,
            next_key_index: 1,
            devices: BTreeMap::new(),
        }
    }

    pub fn companions(&self) -> impl Iterator<Item = &Device> {
        self.devices.values()
    }

    pub fn addr(&self, device: u16) -> DeviceAddr {
        DeviceAddr { phone: self.phone, device }
    }

    /// What the phone needs to encrypt to one of its companions.
    pub fn recipient(&self, device: &Device) -> Recipient {
        Recipient {
            phone: self.phone,
            device: device.id,
            raw_id: self.raw_id,
            key_index: device.key_index,
            keys: device.signal.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("the account {0} already has {MAX_COMPANIONS} linked devices; unlink one first")]
    CompanionLimit(u64),
}

#[derive(Debug, PartialEq, Eq)]
pub enum LoginRefusal {
    /// No such device, or it was unlinked, or it presented another key.
    Unknown,
}

/// Every account the simulator knows, by phone number.
#[derive(Default)]
pub struct Accounts {
    by_phone: BTreeMap<u64, Account>,
}

impl Accounts {
    pub fn get_or_create(&mut self, phone: u64) -> &mut Account {
        self.by_phone.entry(phone).or_insert_with(|| Account::new(phone))
    }

    pub fn get(&self, phone: u64) -> Option<&Account> {
        self.by_phone.get(&phone)
    }

    pub fn get_mut(&mut self, phone: u64) -> Option<&mut Account> {
        self.by_phone.get_mut(&phone)
    }

    pub fn by_lid(&self, lid: u64) -> Option<&Account> {
        self.by_phone.values().find(|a| a.lid == lid)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Account> {
        self.by_phone.values()
    }

    /// Resolves a PN or LID device JID to the stored device address.
    pub fn resolve(&self, jid: AnyDeviceJid) -> Option<DeviceAddr> {
        let (account, device) = match jid {
            AnyDeviceJid::Pn { phone, device } => (self.get(phone)?, device),
            AnyDeviceJid::Lid { lid, device } => (self.by_lid(lid)?, device),
        };
        account.devices.contains_key(&device).then(|| account.addr(device))
    }

    pub fn device(&self, addr: DeviceAddr) -> Option<&Device> {
        self.get(addr.phone)?.devices.get(&addr.device)
    }

    pub fn device_mut(&mut self, addr: DeviceAddr) -> Option<&mut Device> {
        self.get_mut(addr.phone)?.devices.get_mut(&addr.device)
    }

    /// Reserves the next companion slot for a scan in progress. The device only becomes
    /// usable once [`Accounts::confirm`] is called after its signature checked out.
    pub fn reserve_companion(
        &mut self,
        phone: u64,
        noise_key: [u8; 32],
        platform: String,
        signal: SignalKeys,
    ) -> Result<DeviceAddr, LinkError> {
        let account = self.get_or_create(phone);
        if account.devices.len() >= MAX_COMPANIONS {
            return Err(LinkError::CompanionLimit(phone));
        }
        let id = account.next_device;
        account.next_device += 1;
        let key_index = account.next_key_index;
        account.next_key_index += 1;
        account.devices.insert(
            id,
            Device {
                id,
                noise_key,
                key_index,
                platform,
                signal,
                confirmed: false,
                key_shared: false,
                history_sent: false,
            },
        );
        Ok(account.addr(id))
    }

    pub fn confirm(&mut self, addr: DeviceAddr) {
        if let Some(device) = self.device_mut(addr) {
            device.confirmed = true;
        }
    }

    /// Forgets a device (unlinked by the phone, or a pairing that did not complete).
    pub fn remove(&mut self, addr: DeviceAddr) -> bool {
        self.get_mut(addr.phone).map(|a| a.devices.remove(&addr.device).is_some()).unwrap_or(false)
    }

    /// May this device log in with this Noise key?
    pub fn check_login(&self, addr: DeviceAddr, noise_key: &[u8; 32]) -> Result<(), LoginRefusal> {
        match self.device(addr) {
            Some(device) if device.confirmed && &device.noise_key == noise_key => Ok(()),
            _ => Err(LoginRefusal::Unknown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifth_companion_is_refused_until_one_is_removed() {
        let mut accounts = Accounts::default();
        let mut addrs = Vec::new();
        for _ in 0..MAX_COMPANIONS {
            addrs.push(accounts.reserve_companion(1555, [1; 32], "web".into(), SignalKeys::default()).unwrap());
        }
        assert_eq!(addrs.iter().map(|a| a.device).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!(
            accounts.reserve_companion(1555, [1; 32], "web".into(), SignalKeys::default()),
            Err(LinkError::CompanionLimit(1555))
        );
        assert!(accounts.remove(addrs[1]));
        let next = accounts.reserve_companion(1555, [1; 32], "web".into(), SignalKeys::default()).unwrap();
        assert_eq!(next.device, 5, "device ids are not reused");
    }

    #[test]
    fn login_needs_a_confirmed_device_with_the_same_noise_key() {
        let mut accounts = Accounts::default();
        let addr = accounts.reserve_companion(1555, [7; 32], "web".into(), SignalKeys::default()).unwrap();
        assert_eq!(accounts.check_login(addr, &[7; 32]), Err(LoginRefusal::Unknown), "unconfirmed");
        accounts.confirm(addr);
        assert_eq!(accounts.check_login(addr, &[7; 32]), Ok(()));
        assert_eq!(accounts.check_login(addr, &[8; 32]), Err(LoginRefusal::Unknown));
        accounts.remove(addr);
        assert_eq!(accounts.check_login(addr, &[7; 32]), Err(LoginRefusal::Unknown));
    }
}
