//! The `layerfs` binary: see [`layerfs::cli`].

fn main() {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    std::process::exit(layerfs::cli::main(args));
}
