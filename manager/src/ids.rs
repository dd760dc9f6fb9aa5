//! Object ids: 25 characters of base 36 from 128 random bits, as Swarm makes them.

/// The length of an object id.
pub const ID_LEN: usize = 25;

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// A new random id (36^25 > 2^128, so every 128-bit value fits in 25 digits).
pub fn new_id() -> String {
    let mut value: u128 = rand::random();
    let mut digits = [b'0'; ID_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = ALPHABET[(value % 36) as usize];
        value /= 36;
    }
    digits.iter().map(|&b| b as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_25_base36_chars_and_differ() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), ID_LEN);
        assert!(a.bytes().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
        assert_ne!(a, b);
    }
}
