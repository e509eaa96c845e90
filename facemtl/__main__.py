from facemtl.cli import run

run()
