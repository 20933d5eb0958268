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

/// `--dtype` for safetensors weights (GGUF weights keep their quantization).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum DTypeChoice {
    /// f32 on CPU, bf16 on CUDA.
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

    pub fn resolve(self, device: &Device) -> Result<DType> {
        match (self, device.is_cpu()) {
            (Self::Auto, true) | (Self::F32, _) => Ok(DType::F32),
            (Self::Auto, false) | (Self::Bf16, false) => Ok(DType::BF16),
            (Self::F16, _) => Ok(DType::F16),
            (Self::Bf16, true) => Err(Error::Device(
                "bf16 is not supported on the CPU (candle has no bf16 matmul there); use \
                 --dtype f32 or auto"
                    .into(),
            )),
        }
    }
}
