//! Bytes on the WebSocket: the client's intro (with an optional edge-routing prefix), 3-byte
//! length-prefixed frames, and after the handshake the encrypted, flag-prefixed binary nodes.

use wacore_binary::marshal::{marshal, unmarshal_ref};
use wacore_binary::util::unpack;
use wacore_binary::Node;
use wacore_noise::NoiseCipher;

/// Frames carry a 24-bit length.
const MAX_FRAME_LEN: usize = (1 << 24) - 1;
const INTRO_LEN: usize = 4;
/// `ED 00 01 <len24> <routing info>` may precede the intro (PROTOCOL.md 1).
const EDGE_ROUTING_HEADER_LEN: usize = 7;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the connection did not start with the WhatsApp intro (got {0:02x?})")]
    BadIntro(Vec<u8>),
    #[error("a frame could not be decrypted")]
    Decrypt,
    #[error("a frame could not be decoded: {0}")]
    Decode(String),
    #[error("a node could not be encoded: {0}")]
    Encode(String),
}

/// Splits the incoming byte stream into the intro and frames, however the WebSocket
/// messages happen to cut it.
#[derive(Default)]
pub struct FrameReader {
    buffer: Vec<u8>,
    prologue: Option<[u8; INTRO_LEN]>,
}

impl FrameReader {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The 4-byte intro, once it has been read; it is the Noise prologue.
    pub fn prologue(&self) -> Option<&[u8; INTRO_LEN]> {
        self.prologue.as_ref()
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        if self.prologue.is_none() && !self.read_intro()? {
            return Ok(None);
        }
        if self.buffer.len() < 3 {
            return Ok(None);
        }
        let len = usize::from(self.buffer[0]) << 16 | usize::from(self.buffer[1]) << 8 | usize::from(self.buffer[2]);
        if self.buffer.len() < 3 + len {
            return Ok(None);
        }
        let frame = self.buffer[3..3 + len].to_vec();
        self.buffer.drain(..3 + len);
        Ok(Some(frame))
    }

    fn read_intro(&mut self) -> Result<bool, WireError> {
        let mut start = 0;
        if self.buffer.starts_with(b"ED") {
            if self.buffer.len() < EDGE_ROUTING_HEADER_LEN {
                return Ok(false);
            }
            let routing_len =
                usize::from(self.buffer[4]) << 16 | usize::from(self.buffer[5]) << 8 | usize::from(self.buffer[6]);
            start = EDGE_ROUTING_HEADER_LEN + routing_len;
        } else if self.buffer.len() < 2 && b"ED".starts_with(&self.buffer) {
            return Ok(false);
        }
        if self.buffer.len() < start + INTRO_LEN {
            return Ok(false);
        }
        let intro: [u8; INTRO_LEN] = self.buffer[start..start + INTRO_LEN].try_into().expect("sliced to 4");
        // "WA", magic 6, then the token dictionary version.
        if &intro[..3] != b"WA\x06" {
            return Err(WireError::BadIntro(intro.to_vec()));
        }
        self.buffer.drain(..start + INTRO_LEN);
        self.prologue = Some(intro);
        Ok(true)
    }
}

/// Wraps a payload in the 3-byte length header.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    debug_assert!(payload.len() <= MAX_FRAME_LEN, "frames are at most 16 MiB");
    let len = payload.len();
    let mut out = Vec::with_capacity(3 + len);
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8]);
    out.extend_from_slice(payload);
    out
}

/// The post-handshake channel: each direction has its own key and counter.
pub struct Transport {
    read: NoiseCipher,
    write: NoiseCipher,
    read_counter: u32,
    write_counter: u32,
}

impl Transport {
    pub fn new(read: NoiseCipher, write: NoiseCipher) -> Self {
        Self { read, write, read_counter: 0, write_counter: 0 }
    }

    pub fn decrypt_node(&mut self, frame: Vec<u8>) -> Result<Node, WireError> {
        let mut buffer = frame;
        self.read.decrypt_in_place_with_counter(self.read_counter, &mut buffer).map_err(|_| WireError::Decrypt)?;
        self.read_counter = self.read_counter.wrapping_add(1);
        let plain = unpack(&buffer).map_err(|e| WireError::Decode(e.to_string()))?;
        let node = unmarshal_ref(&plain).map_err(|e| WireError::Decode(e.to_string()))?;
        Ok(node.to_owned())
    }

    /// Encodes, encrypts and frames a node (uncompressed: flag byte 0).
    pub fn encrypt_node(&mut self, node: &Node) -> Result<Vec<u8>, WireError> {
        let plain = marshal(node).map_err(|e| WireError::Encode(e.to_string()))?;
        let cipher = self
            .write
            .encrypt_with_counter(self.write_counter, &plain)
            .map_err(|e| WireError::Encode(e.to_string()))?;
        self.write_counter = self.write_counter.wrapping_add(1);
        Ok(frame(&cipher))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_pushes_are_reassembled() {
        let mut reader = FrameReader::default();
        let mut bytes = b"WA\x06\x03".to_vec();
        bytes.extend(frame(b"hello"));
        bytes.extend(frame(b"world!"));
        for chunk in bytes.chunks(3) {
            reader.push(chunk);
        }
        assert_eq!(reader.prologue(), None, "nothing read before next_frame");
        assert_eq!(reader.next_frame().unwrap().as_deref(), Some(&b"hello"[..]));
        assert_eq!(reader.prologue(), Some(b"WA\x06\x03"));
        assert_eq!(reader.next_frame().unwrap().as_deref(), Some(&b"world!"[..]));
        assert_eq!(reader.next_frame().unwrap(), None);
    }

    #[test]
    fn edge_routing_prefix_is_skipped_and_not_part_of_the_prologue() {
        let mut reader = FrameReader::default();
        reader.push(b"ED\x00\x01\x00\x00\x02\xaa\xbbWA\x06\x03");
        reader.push(&frame(b"x"));
        assert_eq!(reader.next_frame().unwrap().as_deref(), Some(&b"x"[..]));
        assert_eq!(reader.prologue(), Some(b"WA\x06\x03"));
    }

    #[test]
    fn garbage_intro_is_an_error() {
        let mut reader = FrameReader::default();
        reader.push(b"GET / HTTP/1.1\r\n");
        assert!(matches!(reader.next_frame(), Err(WireError::BadIntro(_))));
    }
}

#[cfg(test)]
mod transport_tests {
    use wacore_binary::builder::NodeBuilder;

    use super::*;

    /// A zlib stream of one stored (uncompressed) block: enough to exercise the flag.
    fn zlib_stored(data: &[u8]) -> Vec<u8> {
        let len = data.len() as u16;
        let mut out = vec![0x78, 0x01, 0x01];
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(data);
        let (mut a, mut b) = (1u32, 0u32);
        for byte in data {
            a = (a + u32::from(*byte)) % 65521;
            b = (b + a) % 65521;
        }
        out.extend_from_slice(&(b << 16 | a).to_be_bytes());
        out
    }

    #[test]
    fn compressed_frames_are_inflated() {
        let key = [9u8; 32];
        let mut server = Transport::new(NoiseCipher::new(&key).unwrap(), NoiseCipher::new(&[1; 32]).unwrap());
        let client_write = NoiseCipher::new(&key).unwrap();
        let node = NodeBuilder::new("iq").attr("id", "1").attr("type", "get").build();
        let marshalled = marshal(&node).unwrap();
        let mut payload = vec![2u8];
        payload.extend(zlib_stored(&marshalled[1..]));
        let encrypted = client_write.encrypt_with_counter(0, &payload).unwrap();
        assert_eq!(server.decrypt_node(encrypted).unwrap(), node);
    }
}
