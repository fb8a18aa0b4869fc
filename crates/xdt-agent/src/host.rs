//! What the agent takes from its host: its name (reported to central, and the first half of
//! the default agent id) and randomness.

pub(crate) fn hostname() -> String {
    nix::unistd::gethostname().map_or_else(
        |_| "unknown".to_owned(),
        |h| h.to_string_lossy().into_owned(),
    )
}

/// 64 random bits (an instance id, a re-entry pair's name).
pub(crate) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok()
    {
        return u64::from_ne_bytes(bytes);
    }
    crate::clock::unix_ns() ^ u64::from(std::process::id()) << 32
}
