"""The dashboard's page routes: the user's pages, the admin pages, the sign-in pages."""
