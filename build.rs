//! Builds our C++ ops (kernels/*.cpp, and kernels/*.cu with the `cuda` feature) against the
//! libtorch that torch-sys found (pip's torch 2.11.0), and sets the rpaths each artifact needs.
//! Pitfalls behind each line are recorded in ../shared/TOOLCHAIN.md.
use std::env;
use std::path::{Path, PathBuf};

const CPP_SOURCES: &[&str] = &[
    "kernels/ops.cpp",
    "kernels/lrn_common.cpp",
    "kernels/lrn_cpu.cpp",
    "kernels/lrn_pool.cpp",
    "kernels/grouped_conv_cpu.cpp",
    "kernels/cpu_cache.cpp",
    "kernels/sgd_cpu.cpp",
    "kernels/linear_sgd_cpu.cpp",
];
/// The CPU LRN kernels again, for AVX2 + FMA (no torch headers; chosen at run time).
const AVX2_SOURCES: &[&str] = &["kernels/lrn_cpu_avx2.cpp"];
/// Torch glue of the CUDA kernels (g++, with CUDA headers), built with the `cuda` feature.
const CUDA_GLUE_SOURCES: &[&str] = &["kernels/lrn_cuda.cpp", "kernels/grouped_conv_cuda.cpp"];
/// The kernels themselves (nvcc, no torch headers).
const CUDA_SOURCES: &[&str] = &["kernels/lrn.cu", "kernels/grouped_conv.cu"];
const HEADERS: &[&str] = &[
    "kernels/ops.h",
    "kernels/lrn.h",
    "kernels/lrn_pool.h",
    "kernels/linear_sgd.h",
    "kernels/sgd.h",
    "kernels/lrn_cpu_kernels.h",
    "kernels/grouped_conv.h",
    "kernels/dtypes.h",
    "kernels/cuda_api.h",
    "kernels/cuda_common.cuh",
    "kernels/cuda_glue.h",
];

fn main() {
    let lib = PathBuf::from(env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys did not report libtorch's lib folder"));
    let torch_root = lib.parent().expect("libtorch lib folder has a parent").to_path_buf();
    let includes = [
        torch_root.join("include"),
        torch_root.join("include/torch/csrc/api/include"),
    ];
    let cuda = env::var_os("CARGO_FEATURE_CUDA").is_some();
    let python = env::var_os("CARGO_FEATURE_PYTHON").is_some();
    let x86_64 = env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64");
    // pip's CUDA 13 runtime and headers live beside torch: site-packages/nvidia/cu13.
    let cu13 = torch_root.parent().expect("torch has a parent").join("nvidia/cu13");

    for f in CPP_SOURCES
        .iter()
        .chain(AVX2_SOURCES)
        .chain(CUDA_GLUE_SOURCES)
        .chain(CUDA_SOURCES)
        .chain(HEADERS)
    {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=NVCC");

    let mut cpp = cc::Build::new();
    cpp.cpp(true)
        .pic(true)
        .includes(&includes)
        .include("kernels")
        .files(CPP_SOURCES)
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        // at::parallel_for and our kernels are OpenMP, as pip's torch is.
        .flag("-fopenmp")
        .flag("-fno-math-errno")
        // As ATen: selects such as ReLU's `x < 0 ? 0 : x` may then become vector blends.
        .flag("-fno-trapping-math")
        .flag_if_supported("-Wno-unused-parameter")
        .opt_level(3)
        .link_lib_modifier("-bundle")
        // Keep the TORCH_LIBRARY static initialisers even where no symbol is referenced.
        .link_lib_modifier("+whole-archive");
    if cuda {
        cpp.define("ALEXNET_WITH_CUDA", None)
            .include(cu13.join("include"))
            .files(CUDA_GLUE_SOURCES);
        build_cuda(&cu13);
    }
    if x86_64 {
        cpp.define("ALEXNET_WITH_AVX2", None);
        build_avx2();
    }
    cpp.compile("alexnet_ops");

    // Link libtorch_cuda even though nothing references it by name, or CUDA disappears at run time.
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        if cuda {
            println!("cargo:rustc-link-arg=-lc10_cuda");
        }
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    if python {
        // The wheel sits in site-packages/alexnet_rs/: torch and nvidia/cu13 are its neighbours.
        println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../torch/lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../nvidia/cu13/lib");
    } else {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", cu13.join("lib").display());
    }
}

fn build_avx2() {
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .include("kernels")
        .files(AVX2_SOURCES)
        .flag("-std=c++17")
        .flag("-fopenmp")
        .flag("-mavx2")
        .flag("-mfma")
        // IEEE semantics kept (no -ffast-math): rsqrt approximations measured no faster here and
        // would turn inf inputs into NaN. -fno-trapping-math (as ATen) lets selects vectorise.
        .flag("-fno-math-errno")
        .flag("-fno-trapping-math")
        .opt_level(3)
        .link_lib_modifier("-bundle")
        .link_lib_modifier("+whole-archive")
        .compile("alexnet_avx2");
}

fn build_cuda(cu13: &Path) {
    // cc compiles .cu with $NVCC (naming nvcc as the compiler would pass it gcc-only flags).
    let nvcc = env::var("NVCC").unwrap_or_else(|_| {
        panic!("the `cuda` feature needs NVCC=<path to nvcc> (make setup installs pip's nvcc 13.0)")
    });
    // Shown in the build log (CI proves the kernels compile for both architectures).
    let version = std::process::Command::new(&nvcc)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .last()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_else(|e| panic!("cannot run NVCC={nvcc}: {e}"));
    println!(
        "cargo:warning=nvcc ({version}): compiling {} for sm_80, sm_90 + compute_90 PTX",
        CUDA_SOURCES.join(", ")
    );
    cc::Build::new()
        .cuda(true)
        // cc would add the static runtime; we link the shared one torch uses (below), so that
        // our launches and torch's share one CUDA runtime.
        .cudart("none")
        .include("kernels")
        .files(CUDA_SOURCES)
        .flag("-std=c++17")
        .flag("-O3")
        .flag("-gencode=arch=compute_80,code=sm_80")
        .flag("-gencode=arch=compute_90,code=[sm_90,compute_90]")
        .flag("-Xcompiler=-fPIC")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .link_lib_modifier("-bundle")
        .link_lib_modifier("+whole-archive")
        .compile("alexnet_cuda");
    // pip's CUDA has no unversioned libcudart.so: link the versioned file verbatim.
    println!("cargo:rustc-link-search=native={}", cu13.join("lib").display());
    println!("cargo:rustc-link-arg=-l:libcudart.so.13");
}
