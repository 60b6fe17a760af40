//! Device selection: turning `"flex"`, `"cpu"`, `"wgpu"`, `"wgpu:cpu"`, `"cuda"` or `"cuda:1"`
//! into a burn [`Device`].
//!
//! burn 0.22's `Tensor<D>` has no backend parameter: the backend is whatever device a tensor
//! was created on. The CPU backend `flex` is always compiled in; `wgpu` and `cuda` are optional
//! cargo features (of this crate, of `burn-diffusers` and of the CLI), off by default because
//! they add a large build (wgpu, naga and the cubecl compilers). Asking for a backend the
//! binary was built without is a [`DeviceError::NotCompiled`] that says which feature to
//! enable, never a panic.
//!
//! Beware `Device::default()`: burn picks the *first enabled* backend in the order CUDA, ...,
//! wgpu, ..., Flex, so enabling a GPU feature anywhere in the build silently moves every
//! `Device::default()` onto the GPU. [`default_device`] is always flex, whatever the features.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

/// Why a device string could not become a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The string names no backend we know.
    #[error(
        "unknown device `{spec}`: expected `flex` (or `cpu`), `wgpu`, `wgpu:N`, `wgpu:cpu`, `cuda` or `cuda:N`"
    )]
    Unknown {
        /// The string as given.
        spec: String,
    },
    /// The part after the colon is not a device index.
    #[error("invalid device index in `{spec}`: expected a non-negative integer, got `{index}`")]
    BadIndex {
        /// The string as given.
        spec: String,
        /// The part after the colon.
        index: String,
    },
    /// The backend exists but this binary was built without it.
    #[error(
        "device `{spec}` needs burn's `{feature}` backend, which this build does not include: rebuild with `--features {feature}` (compiled in: {compiled})"
    )]
    NotCompiled {
        /// The string as given.
        spec: String,
        /// The cargo feature that would compile the backend in (`wgpu` or `cuda`).
        feature: &'static str,
        /// The backends this build has, comma-separated.
        compiled: String,
    },
    /// The backend is compiled in but the machine has no usable adapter for it (no Vulkan,
    /// Metal or DX12 driver, or no adapter of the requested kind and index).
    #[error("device `{spec}` is not available on this machine: {message}")]
    Unavailable {
        /// The string as given.
        spec: String,
        /// What the backend reported.
        message: String,
    },
}

/// Which wgpu adapter to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WgpuAdapter {
    /// wgpu's own choice: a high-power GPU if there is one (`CUBECL_WGPU_DEFAULT_DEVICE`
    /// overrides it), otherwise whatever adapter exists.
    Default,
    /// The N-th discrete GPU.
    Discrete(usize),
    /// A CPU adapter: a software Vulkan driver such as Mesa's lavapipe.
    Cpu,
}

/// A parsed device string; [`DeviceChoice::device`] makes the burn device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// burn's `flex` CPU backend (`"flex"`, `"cpu"`); always available.
    Flex,
    /// burn's `wgpu` backend (`"wgpu"`, `"wgpu:N"`, `"wgpu:cpu"`); needs the `wgpu` feature.
    Wgpu(WgpuAdapter),
    /// burn's `cuda` backend (`"cuda"` = `"cuda:0"`, `"cuda:N"`); needs the `cuda` feature.
    Cuda(usize),
}

/// The backends compiled into this build, in the spelling [`parse_device`] accepts.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut names = vec!["flex"];
    if cfg!(feature = "wgpu") {
        names.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        names.push("cuda");
    }
    names
}

/// The default device: burn's `flex` CPU backend, whatever GPU features are compiled in.
pub fn default_device() -> Device {
    Device::flex()
}

/// Parses a device string and makes the device (`parse_device("cuda:1")`).
///
/// # Errors
/// [`DeviceError`] when the string is not a device, the backend is not compiled in, or (wgpu)
/// no adapter matches.
pub fn parse_device(spec: &str) -> Result<Device, DeviceError> {
    spec.parse::<DeviceChoice>()?.device()
}

fn parse_index(spec: &str, index: &str) -> Result<usize, DeviceError> {
    index.parse::<usize>().map_err(|_| DeviceError::BadIndex {
        spec: spec.to_string(),
        index: index.to_string(),
    })
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;

    /// Backend names are case-insensitive, as torch's device strings are; surrounding
    /// whitespace is ignored.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let lower = spec.trim().to_ascii_lowercase();
        let (backend, index) = match lower.split_once(':') {
            Some((backend, index)) => (backend, Some(index)),
            None => (lower.as_str(), None),
        };
        match (backend, index) {
            ("flex" | "cpu", None) => Ok(Self::Flex),
            ("wgpu", None) => Ok(Self::Wgpu(WgpuAdapter::Default)),
            ("wgpu", Some("cpu")) => Ok(Self::Wgpu(WgpuAdapter::Cpu)),
            ("wgpu", Some(index)) => {
                Ok(Self::Wgpu(WgpuAdapter::Discrete(parse_index(spec, index)?)))
            }
            ("cuda", None) => Ok(Self::Cuda(0)),
            ("cuda", Some(index)) => Ok(Self::Cuda(parse_index(spec, index)?)),
            _ => Err(DeviceError::Unknown {
                spec: spec.to_string(),
            }),
        }
    }
}

impl fmt::Display for DeviceChoice {
    /// The canonical spelling, which [`FromStr`] parses back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flex => f.write_str("flex"),
            Self::Wgpu(WgpuAdapter::Default) => f.write_str("wgpu"),
            Self::Wgpu(WgpuAdapter::Discrete(i)) => write!(f, "wgpu:{i}"),
            Self::Wgpu(WgpuAdapter::Cpu) => f.write_str("wgpu:cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceChoice {
    /// The cargo feature this backend needs (`None` for flex, which is always there).
    pub fn feature(&self) -> Option<&'static str> {
        match self {
            Self::Flex => None,
            Self::Wgpu(_) => Some("wgpu"),
            Self::Cuda(_) => Some("cuda"),
        }
    }

    /// Whether this build can make the device.
    pub fn is_compiled(&self) -> bool {
        self.feature()
            .is_none_or(|feature| compiled_backends().contains(&feature))
    }

    /// Makes the burn device.
    ///
    /// A wgpu device is initialised here, so a machine without a usable adapter gives
    /// [`DeviceError::Unavailable`] now rather than a panic at the first tensor. A CUDA
    /// device is lazy in burn 0.22 (the driver is loaded at the first tensor operation), so a
    /// missing driver or an index past the last GPU surfaces there.
    ///
    /// # Errors
    /// [`DeviceError::NotCompiled`] for a backend this build lacks;
    /// [`DeviceError::Unavailable`] when wgpu finds no matching adapter.
    pub fn device(&self) -> Result<Device, DeviceError> {
        match self {
            Self::Flex => Ok(Device::flex()),
            Self::Wgpu(adapter) => self.wgpu_device(*adapter),
            Self::Cuda(index) => self.cuda_device(*index),
        }
    }

    #[cfg(feature = "wgpu")]
    fn wgpu_device(&self, adapter: WgpuAdapter) -> Result<Device, DeviceError> {
        use burn::tensor::DeviceKind;
        use burn::tensor::wgpu::WgpuInitError;
        let kind = match adapter {
            WgpuAdapter::Default => DeviceKind::DefaultDevice,
            WgpuAdapter::Discrete(i) => DeviceKind::DiscreteGpu(i),
            WgpuAdapter::Cpu => DeviceKind::Cpu,
        };
        match Device::wgpu_options().device_kind(kind.clone()).init() {
            Ok(device) => Ok(device),
            // The runtime for this selector is already up (an earlier call, or a tensor
            // already made on it): the lazy constructor hands back that same runtime.
            Err(WgpuInitError::Registration { .. }) => Ok(Device::wgpu(kind)),
            Err(error) => Err(DeviceError::Unavailable {
                spec: self.to_string(),
                message: error.to_string(),
            }),
        }
    }

    #[cfg(not(feature = "wgpu"))]
    fn wgpu_device(&self, _adapter: WgpuAdapter) -> Result<Device, DeviceError> {
        Err(self.not_compiled())
    }

    #[cfg(feature = "cuda")]
    fn cuda_device(&self, index: usize) -> Result<Device, DeviceError> {
        Ok(Device::cuda(index))
    }

    #[cfg(not(feature = "cuda"))]
    fn cuda_device(&self, _index: usize) -> Result<Device, DeviceError> {
        Err(self.not_compiled())
    }

    // Only reached from the `not(feature)` arms, so one of them may be compiled out.
    #[allow(dead_code)]
    fn not_compiled(&self) -> DeviceError {
        DeviceError::NotCompiled {
            spec: self.to_string(),
            feature: self.feature().unwrap_or("flex"),
            compiled: compiled_backends().join(", "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_strings_parse_like_torch_device_strings() {
        let cases = [
            ("flex", DeviceChoice::Flex),
            ("cpu", DeviceChoice::Flex),
            (" CPU ", DeviceChoice::Flex),
            ("wgpu", DeviceChoice::Wgpu(WgpuAdapter::Default)),
            ("wgpu:cpu", DeviceChoice::Wgpu(WgpuAdapter::Cpu)),
            ("wgpu:1", DeviceChoice::Wgpu(WgpuAdapter::Discrete(1))),
            ("cuda", DeviceChoice::Cuda(0)),
            ("CUDA:1", DeviceChoice::Cuda(1)),
        ];
        for (spec, want) in cases {
            assert_eq!(spec.parse::<DeviceChoice>(), Ok(want), "{spec}");
            // The canonical spelling parses back to the same choice.
            assert_eq!(want.to_string().parse::<DeviceChoice>(), Ok(want), "{spec}");
        }
    }

    #[test]
    fn bad_device_strings_are_errors_that_name_them() {
        let err = "tpu".parse::<DeviceChoice>().unwrap_err();
        assert_eq!(err, DeviceError::Unknown { spec: "tpu".into() });
        assert!(err.to_string().contains("`tpu`"), "{err}");
        let err = "cuda:-1".parse::<DeviceChoice>().unwrap_err();
        assert!(
            matches!(&err, DeviceError::BadIndex { index, .. } if index == "-1"),
            "{err:?}"
        );
        assert!(err.to_string().contains("`cuda:-1`"), "{err}");
        for spec in ["flex:0", "cuda:", "cuda:0:1", ""] {
            assert!(spec.parse::<DeviceChoice>().is_err(), "{spec:?} parsed");
        }
    }

    #[test]
    fn flex_is_always_available_and_is_the_default() {
        assert!(DeviceChoice::Flex.is_compiled());
        let device = parse_device("flex").unwrap();
        assert!(device == default_device());
        let x = burn::tensor::Tensor::<1>::from_floats([1.0, 2.0], &device);
        assert_eq!(
            x.sum().into_scalar::<f32>(),
            3.0,
            "exact: two small integers"
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_which_feature_to_enable() {
        let err = parse_device("cuda:1").unwrap_err();
        assert!(
            matches!(
                &err,
                DeviceError::NotCompiled {
                    feature: "cuda",
                    ..
                }
            ),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("`cuda:1`"), "{message}");
        assert!(message.contains("--features cuda"), "{message}");
        assert!(!DeviceChoice::Cuda(1).is_compiled());
    }

    #[cfg(not(feature = "wgpu"))]
    #[test]
    fn wgpu_without_the_feature_says_which_feature_to_enable() {
        let err = parse_device("wgpu").unwrap_err();
        assert!(
            matches!(
                &err,
                DeviceError::NotCompiled {
                    feature: "wgpu",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("--features wgpu"), "{err}");
    }
}
