# Two entry points: `make demo` and `make test`. Both create/refresh .venv first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
CORES  ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test lint schema speed-table clean-demo

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	@start=$$(date +%s) && \
	$(VENV)/bin/snakemake --cores $(CORES) --resources gpu=1 --configfile config/config.yaml && \
	$(VENV)/bin/snakemake --cores $(CORES) --configfile config/config.yaml \
		--report results/demo/report.html && \
	mkdir -p results/demo/benchmarks && \
	echo $$(( $$(date +%s) - start )) > results/demo/benchmarks/make_demo_seconds.txt
	@$(PY) -m qaclims.report.summary results/demo

test: $(STAMP)
	$(VENV)/bin/pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks workflow/scripts envs
	$(VENV)/bin/ruff format --check src tests benchmarks workflow/scripts envs
	$(VENV)/bin/mypy
	$(VENV)/bin/snakemake --lint --configfile config/config.yaml
	$(VENV)/bin/snakemake --lint --configfile config/config.yaml config/experiments-demo.yaml
	$(VENV)/bin/snakefmt --check Snakefile workflow/rules

schema: $(STAMP)
	$(PY) -m qaclims.core.schema > workflow/schemas/config.schema.yaml

# the README's speed table from the benchmarks' records (benchmarks/speed_cpu.sh, gpu_check.sh)
speed-table: $(STAMP)
	$(PY) -m qaclims.report.readme --speed benchmarks/records/*.jsonl --write README.md

clean-demo:
	rm -rf results/demo logs/demo benchmarks/demo
