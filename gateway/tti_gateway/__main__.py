from tti_gateway.cli import main

main()
