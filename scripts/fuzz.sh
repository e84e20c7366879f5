#!/usr/bin/env bash
# Coverage-guided fuzzing of `palisade render` and `palisade policy import` (fuzz/, cargo fuzz
# with libFuzzer): runs each target for FUZZ_SECONDS, prints per target the executions, speed,
# coverage and whether it crashed, and exits non-zero on any crash, timeout or out-of-memory.
#
#   FUZZ_SECONDS=300          time per target (libFuzzer -max_total_time)
#   FUZZ_TARGETS="compile mxc_import"
#   FUZZ_SANITIZER=none       or address (cargo fuzz -s; see fuzz/README.md)
#   FUZZ_PROFILE=release      or dev: unoptimised, several times faster to build and slower to
#                             run (CI's one-minute pass)
#   FUZZ_ARGS="..."           extra libFuzzer flags, e.g. -seed=1 or -max_len=8192
#
# Needs the nightly toolchain (installed with rustup when missing). cargo-fuzz is installed from
# crates.io into ~/.cache/palisade/tools on first use; the fuzz build lives in
# ~/.cache/palisade/fuzz-target/<nightly version>[-<sanitizer>] (kept between runs, like target/
# in CI).
# libFuzzer's growing corpus is fuzz/corpus/<target> (not committed), crashes go to
# fuzz/artifacts/<target>/, logs to fuzz/artifacts/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
FUZZ_SECONDS="${FUZZ_SECONDS:-300}"
FUZZ_TARGETS="${FUZZ_TARGETS:-compile mxc_import}"
FUZZ_SANITIZER="${FUZZ_SANITIZER:-none}"
FUZZ_PROFILE="${FUZZ_PROFILE:-release}"
case "${FUZZ_PROFILE}" in
  release) profile_flag=() ;;
  dev) profile_flag=(--dev) ;;
  *)
    echo "fuzz: FUZZ_PROFILE must be release or dev, not '${FUZZ_PROFILE}'" >&2
    exit 2
    ;;
esac
read -r -a extra_args <<<"${FUZZ_ARGS:-}"

if ! [[ "${FUZZ_SECONDS}" =~ ^[1-9][0-9]*$ ]]; then
  echo "fuzz: FUZZ_SECONDS must be a positive whole number of seconds, not '${FUZZ_SECONDS}'" >&2
  exit 2
fi

# The nightly toolchain: cargo fuzz builds with -Zsanitizer and sanitizer-coverage flags.
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: the nightly toolchain is missing; installing it (rustup toolchain install nightly --profile minimal)"
  if ! rustup toolchain install nightly --profile minimal; then
    echo "fuzz: cannot install the nightly Rust toolchain, which cargo fuzz needs." >&2
    echo "fuzz: install it with 'rustup toolchain install nightly --profile minimal' and run again." >&2
    exit 1
  fi
fi
nightly="$(rustup run nightly rustc --version)"
# `rustc 1.97.0-nightly (e50aa6fba 2026-05-19)` -> `1.97.0-nightly-e50aa6fba-2026-05-19`
key="$(sed -E 's/^rustc ([^ ]+) \(([0-9a-f]+) ([0-9-]+)\).*/\1-\2-\3/' <<<"${nightly}" | tr -c 'A-Za-z0-9.\n-' '-')"

# cargo-fuzz, pinned, in the tool cache.
tools="${HOME}/.cache/palisade/tools/cargo-fuzz-${CARGO_FUZZ_VERSION}"
if ! "${tools}/bin/cargo-fuzz" --version 2>/dev/null | grep -qx "cargo-fuzz ${CARGO_FUZZ_VERSION}"; then
  echo "fuzz: installing cargo-fuzz ${CARGO_FUZZ_VERSION} into ${tools}"
  nice -n 19 cargo install --locked --root "${tools}" cargo-fuzz --version "${CARGO_FUZZ_VERSION}"
fi
export PATH="${tools}/bin:${PATH}"

# The fuzz build, keyed by the nightly version and the sanitizer (other nightlies' builds are
# removed).
target_root="${HOME}/.cache/palisade/fuzz-target"
target_dir="${target_root}/${key}"
[[ "${FUZZ_SANITIZER}" == none ]] || target_dir+="-${FUZZ_SANITIZER}"
mkdir -p "${target_dir}"
find "${target_root}" -mindepth 1 -maxdepth 1 ! -name "${key}" ! -name "${key}-*" -exec rm -rf {} +

build_flags=(${profile_flag[@]+"${profile_flag[@]}"} --sanitizer "${FUZZ_SANITIZER}" --debug-assertions --target-dir "${target_dir}")
echo "fuzz: building ${FUZZ_TARGETS} with ${nightly} (${FUZZ_PROFILE}, sanitizer ${FUZZ_SANITIZER}) in ${target_dir}"
nice -n 19 cargo +nightly fuzz build "${build_flags[@]}"

mkdir -p fuzz/artifacts/logs
failed=()
summary=()
for t in ${FUZZ_TARGETS}; do
  if [[ ! -f "fuzz/fuzz_targets/${t}.rs" ]]; then
    echo "fuzz: no such target: ${t} (fuzz/fuzz_targets/${t}.rs)" >&2
    exit 2
  fi
  mkdir -p "fuzz/corpus/${t}" "fuzz/artifacts/${t}"
  log="fuzz/artifacts/logs/${t}.log"
  # Fixed findings are replayed on every run.
  regressions=()
  [[ -d "fuzz/regressions/${t}" ]] && regressions=("fuzz/regressions/${t}")
  dict=()
  [[ -f "fuzz/dict/${t}.dict" ]] && dict=("-dict=fuzz/dict/${t}.dict")
  echo "fuzz: ${t}: ${FUZZ_SECONDS} s (log: ${log})"
  before="$(find "fuzz/artifacts/${t}" -maxdepth 1 -type f | wc -l)"
  status=0
  # New inputs go to the first directory (fuzz/corpus/<target>); the seeds are read only.
  nice -n 19 cargo +nightly fuzz run "${build_flags[@]}" "${t}" \
    "fuzz/corpus/${t}" "fuzz/seeds/${t}" ${regressions[@]+"${regressions[@]}"} -- \
    -max_total_time="${FUZZ_SECONDS}" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 "${dict[@]}" "${extra_args[@]}" >"${log}" 2>&1 || status=$?

  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "${log}" | tail -n 1)"
  speed="$(sed -n 's/^stat::average_exec_per_sec: *//p' "${log}" | tail -n 1)"
  rss="$(sed -n 's/^stat::peak_rss_mb: *//p' "${log}" | tail -n 1)"
  cov="$(grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "${log}" | tail -n 1 || true)"
  outcome="no crash"
  if ((status != 0)); then
    if grep -q 'ALARM: working on the last Unit' "${log}"; then
      outcome="TIMEOUT (an input ran over 10 s)"
    elif grep -q 'out-of-memory' "${log}"; then
      outcome="OUT OF MEMORY (over 2048 MB)"
    elif grep -Eq 'panicked at|deadly signal|ERROR: AddressSanitizer' "${log}"; then
      outcome="CRASH"
    else
      outcome="FAILED (exit ${status}; the build or the run did not complete)"
    fi
    failed+=("${t}")
  fi
  line="fuzz: ${t}: ${execs:-?} executions, ${speed:-?} exec/s, ${cov:-no coverage line}, peak RSS ${rss:-?} MB: ${outcome}"
  summary+=("${line}")
  echo "${line}"
  if ((status != 0)); then
    grep -E 'panicked at|^thread |ERROR: libFuzzer|ALARM|out-of-memory|Test unit written to' "${log}" | head -n 20 >&2 || true
    after="$(find "fuzz/artifacts/${t}" -maxdepth 1 -type f | wc -l)"
    if ((after > before)); then
      newest="$(find "fuzz/artifacts/${t}" -maxdepth 1 -type f -printf '%T@ %p\n' | sort -n | tail -n 1 | cut -d' ' -f2-)"
      echo "fuzz: ${t}: reproduce with: cargo +nightly fuzz run ${build_flags[*]} ${t} ${newest}" >&2
      echo "fuzz: ${t}: minimize with:  cargo +nightly fuzz tmin ${build_flags[*]} ${t} ${newest}" >&2
    fi
    tail -n 40 "${log}" >&2
  fi
done

echo "fuzz: summary (${FUZZ_SECONDS} s per target)"
printf '  %s\n' "${summary[@]}"
if ((${#failed[@]})); then
  echo "fuzz: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: ${#summary[@]} passed, 0 failed"
