from lipgraph.cli import run

run()
