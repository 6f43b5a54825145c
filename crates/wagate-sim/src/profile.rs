//! Account profiles: what a simulated account holds besides its linked devices. An empty
//! account flatters a gateway's memory figures, so a profile gives each newly linked account
//! contacts, groups, chat history, app state and a trickle of inbound messages, as a real
//! small business's phone would.
//!
//! Nothing here is stored per message: every contact, group member, history message and
//! app-state record is derived from a seed (the phone number), so 2,000 profiled accounts
//! cost the simulator little more than 2,000 empty ones. Blobs are rebuilt when asked for.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The most of each count a profile may ask for: beyond them a single history blob or
/// app-state snapshot would outgrow what clients accept (whatsapp-rust caps an inflated
/// history blob at 64 MiB) or the simulator's own memory.
pub const MAX_CONTACTS: u32 = 50_000;
pub const MAX_GROUPS: u32 = 1_000;
/// WhatsApp's own cap on a group's size.
pub const MAX_GROUP_SIZE: u32 = 1_024;
pub const MAX_HISTORY: u32 = 100_000;
/// 100 messages a second for one account is already far beyond any real one.
pub const MAX_TRICKLE_PER_MINUTE: f64 = 6_000.0;

/// How many of everything an account linked from now on gets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountProfile {
    /// The preset this profile started from (`empty` or `small-business`).
    pub preset: &'static str,
    pub contacts: u32,
    pub groups: u32,
    /// Members of a group at most, the account included; each group's size is drawn
    /// between 2 (or this, if smaller) and this.
    pub group_size: u32,
    /// History messages the phone sends at the first link, spread over the chats.
    pub history: u32,
    /// Inbound texts from random contacts per minute while a device is connected; 0 = off.
    pub trickle_per_minute: f64,
}

impl Default for AccountProfile {
    fn default() -> Self {
        Self::empty()
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProfileError {
    #[error("unknown account profile '{0}'; use empty or small-business")]
    UnknownPreset(String),
    #[error("{field} must be at most {max}")]
    TooMany { field: &'static str, max: String },
    #[error("trickle_per_minute must be a number from 0 to {MAX_TRICKLE_PER_MINUTE}")]
    BadTrickle,
    #[error("group_size must be at least 2 when there are groups")]
    GroupTooSmall,
}

/// The optional overrides a start flag set or a control call carries.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileOverrides {
    pub preset: Option<String>,
    pub contacts: Option<u32>,
    pub groups: Option<u32>,
    pub group_size: Option<u32>,
    pub history: Option<u32>,
    pub trickle_per_minute: Option<f64>,
}

impl AccountProfile {
    /// Today's account: nothing but its devices.
    pub fn empty() -> Self {
        Self { preset: "empty", contacts: 0, groups: 0, group_size: 0, history: 0, trickle_per_minute: 0.0 }
    }

    /// A small business: 500 contacts, 30 groups of up to 40, 2,000 history messages and
    /// one inbound message a minute.
    pub fn small_business() -> Self {
        Self {
            preset: "small-business",
            contacts: 500,
            groups: 30,
            group_size: 40,
            history: 2_000,
            trickle_per_minute: 1.0,
        }
    }

    pub fn preset(name: &str) -> Result<Self, ProfileError> {
        match name.trim() {
            "empty" => Ok(Self::empty()),
            "small-business" | "small_business" => Ok(Self::small_business()),
            other => Err(ProfileError::UnknownPreset(other.chars().take(40).collect())),
        }
    }

    /// The preset named in `overrides` (or `base`), with the given counts replacing its own.
    pub fn with_overrides(base: &Self, overrides: &ProfileOverrides) -> Result<Self, ProfileError> {
        let mut profile = match &overrides.preset {
            Some(name) => Self::preset(name)?,
            None => base.clone(),
        };
        if let Some(n) = overrides.contacts {
            profile.contacts = n;
        }
        if let Some(n) = overrides.groups {
            profile.groups = n;
        }
        if let Some(n) = overrides.group_size {
            profile.group_size = n;
        }
        if let Some(n) = overrides.history {
            profile.history = n;
        }
        if let Some(rate) = overrides.trickle_per_minute {
            profile.trickle_per_minute = rate;
        }
        profile.validate()?;
        Ok(profile)
    }

    pub fn validate(&self) -> Result<(), ProfileError> {
        let limits = [
            ("contacts", self.contacts, MAX_CONTACTS),
            ("groups", self.groups, MAX_GROUPS),
            ("group_size", self.group_size, MAX_GROUP_SIZE),
            ("history", self.history, MAX_HISTORY),
        ];
        for (field, value, max) in limits {
            if value > max {
                return Err(ProfileError::TooMany { field, max: max.to_string() });
            }
        }
        let rate = self.trickle_per_minute;
        if !rate.is_finite() || !(0.0..=MAX_TRICKLE_PER_MINUTE).contains(&rate) {
            return Err(ProfileError::BadTrickle);
        }
        if self.groups > 0 && self.group_size < 2 {
            return Err(ProfileError::GroupTooSmall);
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.contacts == 0 && self.groups == 0 && self.history == 0 && self.trickle_per_minute == 0.0
    }
}

/// Contacts' numbers start with this (15 digits, starting with 9).
const CONTACT_PREFIX: u64 = 900_000_000_000_000;

/// SplitMix64: a tiny, good-enough mixer to derive every generated value from the seed.
pub fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut z = seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xD1B5_4A32_D192_ED69);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 32 bytes derived from the seed for one purpose (keys, IVs).
pub fn derive_bytes<const N: usize>(seed: u64, purpose: u64, index: u64) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let word = mix(seed, purpose, index.wrapping_mul(64).wrapping_add(i as u64)).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    out
}

/// What each derived value is for, so two purposes never share a stream.
pub mod purpose {
    pub const GROUP_SIZE: u64 = 1;
    pub const GROUP_MEMBER: u64 = 2;
    pub const NAME: u64 = 3;
    pub const MESSAGE_ID: u64 = 4;
    pub const TEXT: u64 = 5;
    pub const MEDIA_KEY: u64 = 6;
    pub const RECORD_IV: u64 = 7;
    pub const CONTACT_IDENTITY: u64 = 8;
    pub const CONTACT_BASE_KEY: u64 = 9;
    pub const TRICKLE: u64 = 10;
    pub const REGISTRATION: u64 = 11;
    pub const CONTACT_SIGNED_PREKEY: u64 = 12;
}

const FIRST_NAMES: [&str; 24] = [
    "Ana", "Bruno", "Carla", "Diego", "Elena", "Felipe", "Grace", "Hugo", "Irene", "Jonas", "Karin", "Luis", "Maya",
    "Nikhil", "Olga", "Pedro", "Quinn", "Rosa", "Samir", "Tania", "Umar", "Vera", "Wen", "Yusuf",
];
const LAST_NAMES: [&str; 20] = [
    "Silva", "Santos", "Okafor", "Kumar", "Müller", "Rossi", "Garcia", "Nguyen", "Kowalski", "Haddad", "Tanaka",
    "Dubois", "Ivanova", "Mensah", "Costa", "Patel", "Lopez", "Moreau", "Ali", "Berg",
];
const GROUP_KINDS: [&str; 8] =
    ["Orders", "Suppliers", "Team", "Deliveries", "Family", "Wholesale", "Support", "Events"];
const PHRASES: [&str; 12] = [
    "Hi, is the order ready?",
    "Thanks, received.",
    "Can you send the invoice?",
    "What time do you open tomorrow?",
    "The delivery is on its way",
    "Please confirm the address",
    "Do you have this in stock?",
    "Payment sent",
    "See you at 10",
    "Could we move it to Friday?",
    "Great, thank you!",
    "I'll call you later",
];

/// One profiled account: its profile as it was when the account was linked, and what the
/// generated data hangs on. Everything else is derived on demand.
pub struct ProfiledAccount {
    pub profile: AccountProfile,
    pub phone: u64,
    pub seed: u64,
    /// Unix seconds of the link: history ends here.
    pub linked_at: u64,
    /// The groups made for the account (ids in the simulator's group registry), in order.
    pub group_ids: Vec<String>,
    /// The phone's app-state key (id and key data), shared with every companion.
    pub app_state_key_id: Vec<u8>,
    pub app_state_key: [u8; 32],
    /// Per (device, contact): how many trickle messages the contact has sent the device, so
    /// the contact's Signal session can be rebuilt at the right chain step.
    pub trickle_counters: Mutex<HashMap<(u16, u32), u32>>,
    /// Whether the account's trickle task runs (it ends when the last device is unlinked,
    /// and starts again when one links).
    pub trickle_running: AtomicBool,
}

impl ProfiledAccount {
    pub fn new(profile: AccountProfile, phone: u64, linked_at: u64, app_state_key: (Vec<u8>, [u8; 32])) -> Self {
        Self {
            profile,
            phone,
            seed: mix(phone, 0x5EED, 0),
            linked_at,
            group_ids: Vec::new(),
            app_state_key_id: app_state_key.0,
            app_state_key: app_state_key.1,
            trickle_counters: Mutex::new(HashMap::new()),
            trickle_running: AtomicBool::new(false),
        }
    }

    /// Contact `index`'s phone number: `9`, the account's last nine digits (its contact
    /// book), five digits of index. Fifteen digits, so it never meets the numbers tests link.
    pub fn contact_phone(&self, index: u32) -> u64 {
        CONTACT_PREFIX + self.contact_book() * 100_000 + u64::from(index)
    }

    pub fn contact_book(&self) -> u64 {
        self.phone % 1_000_000_000
    }

    /// The contact book and index a contact's number names, if it is one.
    pub fn contact_book_of(phone: u64) -> Option<(u64, u32)> {
        let rest = phone.checked_sub(CONTACT_PREFIX).filter(|rest| *rest < CONTACT_PREFIX / 9)?;
        Some((rest / 100_000, (rest % 100_000) as u32))
    }

    pub fn contact_jid(&self, index: u32) -> String {
        format!("{}@s.whatsapp.net", self.contact_phone(index))
    }

    /// (first name, full name) of a contact as the address book has it.
    pub fn contact_name(&self, index: u32) -> (&'static str, String) {
        let r = mix(self.seed, purpose::NAME, u64::from(index));
        let first = FIRST_NAMES[(r % FIRST_NAMES.len() as u64) as usize];
        let last = LAST_NAMES[((r >> 16) % LAST_NAMES.len() as u64) as usize];
        (first, format!("{first} {last}"))
    }

    pub fn group_subject(&self, index: u32) -> String {
        let kind = GROUP_KINDS[(mix(self.seed, purpose::NAME, 1_000_000 + u64::from(index)) % 8) as usize];
        format!("{kind} {}", index + 1)
    }

    /// The contacts (by index) in group `index`, besides the account. Its size is drawn
    /// between 2 and the profile's group size, and capped by the contacts there are.
    pub fn group_members(&self, index: u32) -> Vec<u32> {
        let contacts = self.profile.contacts;
        let max = self.profile.group_size.max(2);
        let size = 2 + (mix(self.seed, purpose::GROUP_SIZE, u64::from(index)) % u64::from(max - 1)) as u32;
        let wanted = (size - 1).min(contacts) as usize;
        let mut members: Vec<u32> = Vec::with_capacity(wanted);
        let mut draw = 0u64;
        while members.len() < wanted {
            let pick =
                (mix(self.seed, purpose::GROUP_MEMBER, (u64::from(index) << 32) | draw) % u64::from(contacts)) as u32;
            draw += 1;
            if !members.contains(&pick) {
                members.push(pick);
            }
        }
        members
    }

    /// Who created group `index`: the account for every third group, else its first contact.
    pub fn group_owner(&self, index: u32, members: &[u32]) -> Option<u32> {
        if index.is_multiple_of(3) {
            return None;
        }
        members.first().copied()
    }

    /// The chats history is spread over: the groups first (so even a short history reaches
    /// them), then the contacts.
    pub fn chat_count(&self) -> u32 {
        self.group_ids.len() as u32 + self.profile.contacts
    }

    pub fn chat(&self, chat: u32) -> Chat {
        let groups = self.group_ids.len() as u32;
        if chat < groups {
            Chat::Group(chat)
        } else {
            Chat::Contact(chat - groups)
        }
    }

    pub fn chat_jid(&self, chat: Chat) -> String {
        match chat {
            Chat::Group(g) => format!("{}@g.us", self.group_ids[g as usize]),
            Chat::Contact(c) => self.contact_jid(c),
        }
    }

    /// The chat history message `m` belongs to (round robin over the chats).
    pub fn chat_of_message(&self, m: u32) -> Option<Chat> {
        let chats = self.chat_count();
        (chats > 0).then(|| self.chat(m % chats))
    }

    /// History covers the 30 days before the link, message 0 the oldest.
    pub fn message_time(&self, m: u32) -> u64 {
        const SPAN: u64 = 30 * 24 * 3600;
        let history = u64::from(self.profile.history.max(1));
        let step = (SPAN / history).max(1);
        self.linked_at.saturating_sub((history - u64::from(m)) * step)
    }

    pub fn message_id(&self, purpose: u64, n: u64) -> String {
        format!("3EB0{:016X}", mix(self.seed, purpose, n))
    }

    pub fn phrase(&self, n: u64) -> &'static str {
        PHRASES[(mix(self.seed, purpose::TEXT, n) % PHRASES.len() as u64) as usize]
    }
}

/// The profile of an account a device just linked to. The first link fixes it: the profile
/// in force now, with its groups registered in the simulator's group model; later links
/// find it. The caller starts the trickle with it.
pub fn assign(inner: &mut crate::state::Inner, phone: u64) -> Option<Arc<ProfiledAccount>> {
    let profile = inner.account_profile.clone();
    let account = inner.accounts.get(phone)?;
    if let Some(existing) = &account.profile {
        return Some(existing.clone());
    }
    let mut profiled = ProfiledAccount::new(profile, phone, crate::clock::unix_now(), account.app_state_key.clone());
    for g in 0..profiled.profile.groups {
        let members = profiled.group_members(g);
        let owner = profiled.group_owner(g, &members).map_or(phone, |c| profiled.contact_phone(c));
        let participants: Vec<u64> =
            members.iter().map(|c| profiled.contact_phone(*c)).chain(std::iter::once(phone)).collect();
        let subject = profiled.group_subject(g);
        let id = inner.groups.create_indexed(subject, owner, &participants, |member| member == phone).id.clone();
        profiled.group_ids.push(id);
    }
    let profiled = Arc::new(profiled);
    inner.accounts.get_mut(phone)?.profile = Some(profiled.clone());
    // Two accounts ending in the same nine digits share a contact book; the first keeps it.
    if profiled.profile.contacts > 0 {
        inner.contact_books.entry(profiled.contact_book()).or_insert_with(|| profiled.clone());
    }
    if !profiled.profile.is_empty() {
        tracing::info!(
            phone,
            profile = profiled.profile.preset,
            contacts = profiled.profile.contacts,
            groups = profiled.profile.groups,
            history = profiled.profile.history,
            "account linked with a profile"
        );
    }
    Some(profiled)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chat {
    Group(u32),
    Contact(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(profile: AccountProfile) -> ProfiledAccount {
        ProfiledAccount::new(profile, 15551234567, 1_700_000_000, (vec![1], [2; 32]))
    }

    #[test]
    fn presets_and_overrides() {
        assert!(AccountProfile::default().is_empty());
        let overrides =
            ProfileOverrides { preset: Some("small-business".into()), contacts: Some(50), ..Default::default() };
        let profile = AccountProfile::with_overrides(&AccountProfile::empty(), &overrides).unwrap();
        assert_eq!((profile.contacts, profile.groups, profile.history), (50, 30, 2000));
        assert_eq!(profile.preset, "small-business");
        let bad = |o: ProfileOverrides| AccountProfile::with_overrides(&AccountProfile::empty(), &o).unwrap_err();
        assert!(matches!(
            bad(ProfileOverrides { preset: Some("huge".into()), ..Default::default() }),
            ProfileError::UnknownPreset(_)
        ));
        assert!(matches!(
            bad(ProfileOverrides { contacts: Some(MAX_CONTACTS + 1), ..Default::default() }),
            ProfileError::TooMany { .. }
        ));
        assert_eq!(
            bad(ProfileOverrides { trickle_per_minute: Some(f64::NAN), ..Default::default() }),
            ProfileError::BadTrickle
        );
        assert_eq!(
            bad(ProfileOverrides { trickle_per_minute: Some(-1.0), ..Default::default() }),
            ProfileError::BadTrickle
        );
        assert_eq!(
            bad(ProfileOverrides { groups: Some(1), group_size: Some(1), ..Default::default() }),
            ProfileError::GroupTooSmall
        );
    }

    #[test]
    fn generated_data_is_stable_and_within_bounds() {
        let a = account(AccountProfile::small_business());
        let b = account(AccountProfile::small_business());
        for g in 0..30 {
            let members = a.group_members(g);
            assert_eq!(members, b.group_members(g));
            assert!((1..40).contains(&members.len()), "{}", members.len());
            let mut unique = members.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), members.len());
            assert!(members.iter().all(|m| *m < 500));
        }
        assert_eq!(a.contact_name(7), b.contact_name(7));
        assert_eq!(a.contact_phone(0).to_string().len(), 15);
        assert_eq!(ProfiledAccount::contact_book_of(a.contact_phone(7)), Some((a.contact_book(), 7)));
        assert_eq!(ProfiledAccount::contact_book_of(15551234567), None);
        assert_eq!(ProfiledAccount::contact_book_of(u64::MAX), None);
        assert_ne!(a.contact_phone(0), a.contact_phone(1));
        assert!(a.message_time(0) < a.message_time(1999));
        assert!(a.message_time(1999) < a.linked_at);
    }

    #[test]
    fn few_contacts_make_small_groups() {
        let profile = AccountProfile { contacts: 3, groups: 2, group_size: 40, ..AccountProfile::empty() };
        let a = account(profile);
        assert!(a.group_members(0).len() <= 3);
        let none = account(AccountProfile { contacts: 0, groups: 1, group_size: 5, ..AccountProfile::empty() });
        assert!(none.group_members(0).is_empty());
    }

    /// Resident memory of this process, in KiB (Linux; 0 elsewhere).
    fn rss_kib() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        pages * 4
    }

    /// The figures docs/simulator.md quotes: blob sizes of a full small-business account,
    /// and what 2,000 linked accounts cost the simulator with and without the profile.
    /// `cargo test -p wagate-sim --release --lib profile_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn profile_cost() {
        use crate::accounts::SignalKeys;
        use crate::history::{chunk_plaintext, history_sync, Chunk};
        use waproto::buffa::Message as _;

        let mut account = account(AccountProfile::small_business());
        account.group_ids = (0..30).map(|g| format!("1203630000000000{g:02}")).collect();
        for chunk in [Chunk::InitialBootstrap, Chunk::Recent] {
            let inflated = history_sync(&account, chunk).encode_to_vec().len();
            let compressed = chunk_plaintext(&account, chunk).len();
            println!("history {chunk:?}: {compressed} bytes compressed, {inflated} inflated");
        }
        let snapshot = crate::app_state::snapshot(&account, crate::app_state::Collection::CriticalUnblockLow);
        println!("contacts snapshot: {} bytes, {} records", snapshot.encode_to_vec().len(), snapshot.records.len());

        for profile in [AccountProfile::empty(), AccountProfile::small_business()] {
            let state = crate::state::SimState::new(
                crate::keys::ServerKeys::generate(),
                crate::state::SimConfig { account_profile: profile.clone(), ..Default::default() },
                crate::media::MediaStore::new("127.0.0.1:9".into()),
            );
            let before = rss_kib();
            let mut inner = state.lock();
            for n in 0..2_000u64 {
                let phone = 15_550_000_000 + n;
                let addr =
                    inner.accounts.reserve_companion(phone, [1; 32], "test".into(), SignalKeys::default()).unwrap();
                inner.accounts.confirm(addr);
                assign(&mut inner, phone);
            }
            let after = rss_kib();
            println!(
                "2000 accounts, profile {}: {} KiB, {:.1} KiB per account",
                profile.preset,
                after.saturating_sub(before),
                after.saturating_sub(before) as f64 / 2000.0
            );
        }
    }
}
