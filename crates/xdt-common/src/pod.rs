//! `aya::Pod` for the layouts, in user space only: the probe has no aya. Every layout module
//! names its types with [`user_pod!`].

/// Implements `aya::Pod` for a layout (user space only: the probe has no aya).
macro_rules! user_pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is #[repr(C)], `Copy`, made only of integers and integer arrays,
            // with explicit padding fields, so every bit pattern is a valid value.
            unsafe impl aya::Pod for $t {}
        )*
    };
}
pub(crate) use user_pod;
