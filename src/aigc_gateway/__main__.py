from aigc_gateway.cli import main

main()
