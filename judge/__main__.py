from judge.cli import app

app(prog_name="pandalm-judge")
