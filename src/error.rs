//! The crate's one error type. Every variant's message says what went wrong and what to do.

use std::fmt;
use std::path::PathBuf;

/// Errors returned by vae-wgpu. Messages are meant to be shown to users as they are.
#[derive(Debug)]
pub enum VaeError {
    /// No wgpu adapter could be found on this machine.
    NoAdapter {
        /// The backends and selection that were tried, for the message.
        tried: String,
    },
    /// The adapter refused to create a device with the features/limits we need.
    DeviceRequest(String),
    /// The adapter lacks a capability a requested kernel strategy needs.
    Unsupported(String),
    /// Tensor shapes do not fit the operation.
    Shape(String),
    /// A buffer request exceeds what the device allows.
    BufferTooLarge {
        /// The buffer's label.
        label: String,
        /// The size requested.
        bytes: u64,
        /// The device's limit.
        limit: u64,
        /// The name of the `wgpu::Limits` field that sets it.
        limit_name: &'static str,
    },
    /// A wgpu validation or out-of-memory error surfaced while recording or submitting work.
    Gpu(String),
    /// Mapping a buffer for readback failed.
    Readback(String),
    /// An I/O error on a named file.
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system reported.
        source: std::io::Error,
    },
    /// A data file exists but its contents are not what the format requires.
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A checkpoint does not match the model it is loaded into, or is malformed.
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What does not match, with the tensor's name.
        problem: String,
    },
    /// An invalid configuration value or command-line argument.
    Config(String),
    /// Configuration fields whose values (or whose combination) the library refuses, named as
    /// the library's types spell them (`TrainConfig::batch_size`, `Code::Quantized::groups`), so
    /// that a front end can name its own option for each.
    Setting {
        /// The fields at fault, e.g. `["TrainConfig::mc_samples"]`.
        fields: Vec<&'static str>,
        /// What is wrong and what is accepted.
        problem: String,
    },
}

impl fmt::Display for VaeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VaeError::NoAdapter { tried } => write!(
                f,
                "no GPU adapter found ({tried}). Install a GPU driver with Vulkan, Metal or DX12 \
                 support; on headless Linux install Mesa's software Vulkan driver with \
                 `apt-get install -y mesa-vulkan-drivers` (adapter \"llvmpipe\")"
            ),
            VaeError::DeviceRequest(m) => write!(f, "the adapter refused to create a device: {m}"),
            VaeError::Unsupported(m) => write!(f, "unsupported on this adapter: {m}"),
            VaeError::Shape(m) => write!(f, "shape mismatch: {m}"),
            VaeError::BufferTooLarge {
                label,
                bytes,
                limit,
                limit_name,
            } => write!(
                f,
                "buffer '{label}' needs {bytes} bytes but the device's {limit_name} is {limit} \
                 bytes; use a smaller batch size or model"
            ),
            VaeError::Gpu(m) => write!(f, "GPU error: {m}"),
            VaeError::Readback(m) => write!(f, "reading a buffer back from the GPU failed: {m}"),
            VaeError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            VaeError::Format { path, problem } => write!(f, "{}: {problem}", path.display()),
            VaeError::Checkpoint { path, problem } => {
                write!(f, "checkpoint {}: {problem}", path.display())
            }
            VaeError::Config(m) => write!(f, "invalid configuration: {m}"),
            VaeError::Setting { fields, problem } => write!(f, "{}: {problem}", fields.join(" with ")),
        }
    }
}

impl std::error::Error for VaeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            VaeError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl VaeError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        VaeError::Io {
            path: path.into(),
            source,
        }
    }
    /// A refused value of one configuration field (see [`VaeError::Setting`]).
    pub fn setting(field: &'static str, problem: impl Into<String>) -> Self {
        VaeError::Setting {
            fields: vec![field],
            problem: problem.into(),
        }
    }
    /// A refused combination of configuration fields (see [`VaeError::Setting`]).
    pub fn settings(fields: &[&'static str], problem: impl Into<String>) -> Self {
        VaeError::Setting {
            fields: fields.to_vec(),
            problem: problem.into(),
        }
    }
    /// A format problem in the named file.
    pub fn format(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        VaeError::Format {
            path: path.into(),
            problem: problem.into(),
        }
    }
}

/// Result alias used throughout the crate.
pub type Result<T, E = VaeError> = std::result::Result<T, E>;
