from hashmesh.node.cli.main import main

main()
