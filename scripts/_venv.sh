# Sourced by the scripts: make .venv (Python >= 3.11) and install fanflow with its dev extras
# when pyproject.toml changed since the last install.
python_bin="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
stamp=.venv/.fanflow-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet -e ".[dev]"
  touch "$stamp"
fi
