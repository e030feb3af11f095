# Sourced by scripts/test, scripts/test-pythons and scripts/quickstart: create or reuse a virtualenv (.venv,
# or the directory given second, made with $PYTHON) and install cmworker into it with the given extra,
# reinstalling only when the packaging files changed.
ensure_venv() {
    local extra=${1:-}
    local venv=${2:-.venv}
    local python=${PYTHON:-python3}
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "$venv"
    fi
    local stamp=$venv/.cmworker-installed-${extra:-base}
    local want
    want=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".${extra:+[$extra]}"
        echo "$want" > "$stamp"
    fi
}
