//! Choosing where a model runs and at which precision.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};

use crate::error::{Error, Result, candle_message};

/// `--device`: `auto` (CUDA when this build has it and a GPU answers, else CPU), `cpu`,
/// `cuda` or `cuda:N`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| {
                    Error::Device(format!(
                        "unknown device `{s}`; use auto, cpu, cuda (or gpu) or cuda:N"
                    ))
                }),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceChoice {
    pub fn resolve(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(ordinal) => {
                if !cfg!(feature = "cuda") {
                    return Err(Error::Device(
                        "this wick was built without CUDA support; rebuild it with \
                         `cargo build --release --features cuda`, or use --device cpu"
                            .into(),
                    ));
                }
                Device::new_cuda(ordinal).map_err(|e| {
                    Error::Device(format!(
                        "CUDA device {ordinal} is not usable ({}); check the driver with \
                         nvidia-smi, or use --device cpu",
                        candle_message(&e)
                    ))
                })
            }
            Self::Auto => {
                if !cfg!(feature = "cuda") {
                    tracing::info!(
                        "this wick was built without CUDA support (cargo build --features cuda); \
                         running on the CPU"
                    );
                    return Ok(Device::Cpu);
                }
                match Device::new_cuda(0) {
                    Ok(device) => Ok(device),
                    Err(e) => {
                        tracing::info!(
                            "no usable CUDA device ({}); running on the CPU",
                            candle_message(&e)
                        );
                        Ok(Device::Cpu)
                    }
                }
            }
        }
    }
}

/// What the KV caches may hold when `--kv-cache-memory` is not given, measured once the weights
/// are loaded: half the memory the system reports available on the CPU (the rest stays for the
/// OS, other processes and activations), 80% of a GPU's free memory.
pub(crate) fn default_kv_cache_budget(device: &Device) -> usize {
    const FALLBACK: usize = 4 << 30;
    match device {
        Device::Cpu => {
            let mut system = sysinfo::System::new();
            system.refresh_memory();
            match usize::try_from(system.available_memory()) {
                Ok(0) | Err(_) => FALLBACK,
                Ok(available) => available / 2,
            }
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => match cuda.cuda_stream().context().mem_get_info() {
            Ok((free, _total)) => free / 5 * 4,
            Err(e) => {
                tracing::warn!("cannot read the GPU's free memory ({e}); assuming 4 GiB");
                FALLBACK
            }
        },
        _ => FALLBACK,
    }
}

/// How a device is shown to users.
pub(crate) fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// `--dtype` for safetensors weights (GGUF weights keep their quantization). On a CPU the
/// activations are f32 and the dtype is the matrices': bf16 and f16 stay 16-bit there, on wick's
/// own kernel (`kernels::half`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum DTypeChoice {
    /// The file's own dtype on CPU (bf16/f16 kept as stored, f32 as f32), bf16 on CUDA.
    #[default]
    Auto,
    F32,
    F16,
    Bf16,
}

impl fmt::Display for DTypeChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        })
    }
}

impl DTypeChoice {
    /// The dtype of weights quantized at load (f32, as GGUF's).
    pub fn resolve_quantized(self) -> Result<DType> {
        match self {
            Self::Auto | Self::F32 => Ok(DType::F32),
            other => Err(Error::Device(format!(
                "--quantize computes in f32, as GGUF models do; --dtype {other} does not apply \
                 (leave it at auto)"
            ))),
        }
    }

    /// The dtype activations compute in: f32 on a CPU, whatever the matrices are kept in (see
    /// [`DTypeChoice::on_cpu`]).
    pub fn resolve(self, device: &Device) -> DType {
        match (self, device.is_cpu()) {
            (_, true) | (Self::F32, false) => DType::F32,
            (Self::Auto | Self::Bf16, false) => DType::BF16,
            (Self::F16, false) => DType::F16,
        }
    }

    /// The dtype a CPU keeps the matrices of a file stored in `stored` in: bf16 and f16 stay
    /// 16-bit (on wick's half kernel), so `auto` is the file's own dtype.
    pub fn on_cpu(self, stored: DType) -> DType {
        match self {
            Self::Auto if matches!(stored, DType::BF16 | DType::F16) => stored,
            Self::Auto | Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }
}
