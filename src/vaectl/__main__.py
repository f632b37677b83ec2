from vaectl.cli import app

app(prog_name="vaectl")
