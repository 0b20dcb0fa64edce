//! The crate's one error type. Every variant's message says what went wrong and what to do.

use std::path::PathBuf;

/// Errors returned by vae-wgpu. Messages are meant to be shown to users as they are.
#[derive(Debug, thiserror::Error)]
pub enum VaeError {
    /// No wgpu adapter could be found on this machine.
    #[error(
        "no GPU adapter found ({tried}). Install a GPU driver with Vulkan, Metal or DX12 support; on \
         headless Linux install Mesa's software Vulkan driver with `apt-get install -y \
         mesa-vulkan-drivers` (adapter \"llvmpipe\")"
    )]
    NoAdapter {
        /// The backends and selection that were tried, for the message.
        tried: String,
    },
    /// The adapter refused to create a device with the features/limits we need.
    #[error("the adapter refused to create a device: {0}")]
    DeviceRequest(String),
    /// The adapter lacks a capability a requested kernel strategy needs.
    #[error("unsupported on this adapter: {0}")]
    Unsupported(String),
    /// Tensor shapes do not fit the operation.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A buffer request exceeds what the device allows.
    #[error(
        "buffer '{label}' needs {bytes} bytes but the device's {limit_name} is {limit} bytes; use a smaller \
         batch, model or count"
    )]
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
    /// A size from a flag or a file would need more host memory than the budget allows.
    #[error(
        "{what} would need {bytes} bytes of host memory, more than the budget of {budget} bytes \
         (GpuOptions::host_memory_budget, by default 0.8 × the memory available); choose smaller sizes"
    )]
    HostMemory {
        /// What would need it, naming the size that decides it.
        what: String,
        /// Bytes it would need.
        bytes: u128,
        /// The budget.
        budget: u64,
    },
    /// A host's buffer handed to the crate cannot serve as the tensor asked for (its usages,
    /// the offset's alignment or its size).
    #[error("the buffer given for {what}: {problem}")]
    HostBuffer {
        /// The tensor it was to hold, with its shape.
        what: String,
        /// What is wrong and what the crate needs.
        problem: String,
    },
    /// A wgpu validation or out-of-memory error surfaced while recording or submitting work.
    #[error("GPU error: {0}")]
    Gpu(String),
    /// Mapping a buffer for readback failed.
    #[error("reading a buffer back from the GPU failed: {0}")]
    Readback(String),
    /// An I/O error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },
    /// A data file exists but its contents are not what the format requires.
    #[error("{}: {problem}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A checkpoint does not match the model it is loaded into, or is malformed.
    #[error("checkpoint {}: {problem}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What does not match, with the tensor's name.
        problem: String,
    },
    /// An invalid configuration value or command-line argument.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A new run was pointed at a directory that already holds one.
    #[error(
        "{} already holds a run ({}); resume it, or overwrite it explicitly",
        path.display(),
        files.join(", ")
    )]
    RunExists {
        /// The run directory.
        path: PathBuf,
        /// What it holds.
        files: Vec<String>,
    },
    /// Another process is training in the run directory.
    #[error(
        "another process{} is training in {} (it holds {}/.lock); wait for it to finish or use another directory",
        pid.map_or(String::new(), |p| format!(" (pid {p})")),
        path.display(),
        path.display()
    )]
    RunLocked {
        /// The run directory.
        path: PathBuf,
        /// The process holding the lock, as it wrote it into the lock file.
        pid: Option<u32>,
    },
    /// There is no run to resume in the directory.
    #[error("nothing to resume in {}: {problem}", path.display())]
    NoRun {
        /// The directory.
        path: PathBuf,
        /// What is missing or wrong.
        problem: String,
    },
    /// Training produced a value that is not finite (NaN or infinite).
    #[error(
        "training diverged in epoch {epoch}: {what} was not finite at step {step}. Nothing of that epoch \
         was saved; lower the learning rate (or β, or the data's scale) and train again"
    )]
    Diverged {
        /// The epoch (from 1) the step belongs to.
        epoch: u64,
        /// The global step (from 0) that first produced a non-finite value.
        step: u64,
        /// What was not finite.
        what: String,
    },
    /// Configuration fields whose values (or whose combination) the library refuses, named as
    /// the library's types spell them (`TrainConfig::batch_size`, `Code::Quantized::groups`), so
    /// that a front end can name its own option for each.
    #[error("{}: {problem}", fields.join(" with "))]
    Setting {
        /// The fields at fault, e.g. `["TrainConfig::mc_samples"]`.
        fields: Vec<&'static str>,
        /// What is wrong and what is accepted.
        problem: String,
    },
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
