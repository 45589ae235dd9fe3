from cowlab.cli.main import main

main()
