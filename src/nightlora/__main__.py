from nightlora.cli import entry

entry()
