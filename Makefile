# dicom-probe: convenience targets (run as root; see README.md).
#   make demo        the founding incident, live, in network namespaces (about 75 s): python3 demo/lab.py
#   make demo-fast   the same with shorter pauses and alert windows (about 45 s)
#   make demo-keep   leave the lab running after the story, until Ctrl-C
#   make test        the test suite; make test-demo only the demo's end-to-end test

PYTHON ?= python3

.PHONY: demo demo-fast demo-keep test test-demo

demo:
	$(PYTHON) demo/lab.py

demo-fast:
	$(PYTHON) demo/lab.py --fast

demo-keep:
	$(PYTHON) demo/lab.py --keep

test:
	$(PYTHON) -m pytest -q tests

test-demo:
	$(PYTHON) -m pytest -q tests/test_demo.py
