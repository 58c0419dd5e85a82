//! The host's error type: every bad input is reported with what was expected, never a panic;
//! a bad setting names its field and, where the caller knows, the flag or file that set it.

/// Errors of the host API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A buffer or tensor whose size does not match the shape it is used with.
    #[error("{what}: expected {expected} f32 values, got {got}")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// BatchNorm in training mode with fewer than two samples (the batch variance is undefined).
    #[error("BatchNorm in training mode needs a batch of at least 2, got {0}: the variance of one sample is undefined")]
    BatchTooSmall(usize),
    /// An argument outside its valid range.
    #[error("{0}")]
    InvalidArgument(String),
    /// A configuration field set to a value it cannot take: `field` is its key in
    /// configuration files (`optim.base_lr`), whose last part is also its flag (`--base-lr`).
    #[error("{}: {reason}", .origin.name(.field))]
    Setting {
        field: &'static str,
        reason: String,
        origin: Origin,
    },
    /// No usable GPU: no driver, no device, or no cuBLAS.
    #[error("GPU unavailable: {0}")]
    GpuUnavailable(String),
    /// An op this backend does not run (yet), named with where it does run.
    #[error("{0}")]
    Unsupported(String),
    /// A CUDA driver or cuBLAS call failed.
    #[error("CUDA error: {0}")]
    Cuda(String),
    /// A file that could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// A data file that is missing, truncated or not in the expected format.
    #[error("{path}: {reason}")]
    Data {
        path: std::path::PathBuf,
        reason: String,
    },
    /// A checkpoint that is not what the run needs (corrupt, or another architecture).
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        path: std::path::PathBuf,
        reason: String,
    },
    /// Training produced a non-finite loss or gradient (`cause` says which).
    #[error("training diverged at step {step}: {cause}; the last checkpoint (if any) is intact")]
    Diverged { step: u64, cause: String },
}

/// Where a configuration field's value came from, as far as the caller knows.
#[derive(Clone, Debug, PartialEq)]
pub enum Origin {
    /// Not known here (a recipe, a saved run, a library caller): the message gives both the
    /// key and the flag.
    Unknown,
    /// Given as its flag: the message names the flag.
    Flag,
    /// Set in this configuration file: the message names the file and the key.
    File(std::path::PathBuf),
}

/// A configuration field's name without its section: `base_lr` of `optim.base_lr`.
pub fn field_name(field: &str) -> &str {
    field.rsplit('.').next().unwrap_or(field)
}

impl Origin {
    /// How the message names the field, by where its value was set.
    fn name(&self, field: &str) -> String {
        let flag = format!("--{}", field_name(field).replace('_', "-"));
        match self {
            Origin::Unknown => format!("{field} ({flag})"),
            Origin::Flag => flag,
            Origin::File(path) => format!("{}: {field}", path.display()),
        }
    }
}

impl Error {
    /// A bad value of configuration field `field` (`section.name`), origin unknown.
    pub fn setting(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Setting {
            field,
            reason: reason.into(),
            origin: Origin::Unknown,
        }
    }

    /// Turns another error about field `field`'s value (a name that does not parse, say)
    /// into a [`Error::Setting`] for it: `.map_err(Error::about("model.arch"))`.
    pub fn about(field: &'static str) -> impl FnOnce(Error) -> Error {
        move |e| match e {
            e @ Error::Setting { .. } => e,
            e => Error::setting(field, e.to_string()),
        }
    }

    /// `self` with `origin` as where its setting's value came from ([`Error::Setting`] only;
    /// other errors pass unchanged).
    pub fn set_in(self, origin: Origin) -> Self {
        match self {
            Error::Setting { field, reason, .. } => Error::Setting {
                field,
                reason,
                origin,
            },
            e => e,
        }
    }

    /// An I/O error naming the file.
    pub fn io(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// `Ok` when `got == expected`, else a [`Error::Length`] naming `what`.
pub fn check_len(what: &'static str, got: usize, expected: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::Length {
            what,
            expected,
            got,
        })
    }
}
