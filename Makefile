# Shortcuts; setup.sh does the work (apt packages, venv, pip) so a fresh machine needs only sh.
.PHONY: demo test bench
demo:
	sh setup.sh demo
test:
	sh setup.sh test
bench:
	sh setup.sh bench
