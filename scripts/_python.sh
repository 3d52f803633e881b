# Sourced by scripts/test and scripts/demo: find the interpreter for a Python version.
# Usage: find_python 3.12  -> prints the path, or fails with a clear message.
find_python() {
  local version=$1 candidate=""
  if command -v pyenv >/dev/null 2>&1; then
    local prefix
    prefix=$(pyenv prefix "$version" 2>/dev/null | head -1) || true
    [[ -n $prefix && -x $prefix/bin/python ]] && candidate=$prefix/bin/python
  fi
  if [[ -z $candidate ]] && command -v "python$version" >/dev/null 2>&1 \
      && "python$version" -c 'pass' >/dev/null 2>&1; then
    candidate=$(command -v "python$version")
  fi
  if [[ -z $candidate ]]; then
    echo "error: Python $version not found (tried 'pyenv prefix $version' and python$version on PATH)." >&2
    echo "       Install it (e.g. 'pyenv install $version') or choose another with TASKPOOL_PYTHON=3.x." >&2
    return 1
  fi
  echo "$candidate"
}

# make_venv DIR PYTHON: create DIR as a virtualenv of PYTHON unless it already is one.
make_venv() {
  local dir=$1 python=$2
  if [[ ! -x $dir/bin/python ]] || ! "$dir/bin/python" -c 'pass' >/dev/null 2>&1; then
    rm -rf "$dir"
    "$python" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --upgrade pip >/dev/null
  fi
}
