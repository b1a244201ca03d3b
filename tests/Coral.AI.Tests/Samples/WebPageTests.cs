using Coral.Samples.WebApi;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Playwright;

namespace Coral.AI.Tests;

/// <summary>The web chat page in a real browser: Debian's chromium (installed by .ci/run) driven by Playwright .NET.</summary>
public class WebPageTests
{
    private const string Chromium = "/usr/bin/chromium";

    [Fact]
    public async Task ChatPage_StreamsAReply_AndShowsTokensPerSecond()
    {
        Assert.True(File.Exists(Chromium), "Debian's chromium is required (apt-get install chromium; .ci/run installs it).");
        await using WebApplication app = CoralWebApp.Build(["--urls", "http://127.0.0.1:0", "--Coral:ModelPath", TransformerModelTests.ModelFor("qwen2"),
            "--Coral:ContextLength", "256", "--Coral:DType", "float32", "--Logging:LogLevel:Default", "Warning"]);
        await app.StartAsync();
        string url = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();

        using IPlaywright playwright = await Playwright.CreateAsync();
        await using IBrowser browser = await playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions
        {
            ExecutablePath = Chromium,
            Headless = true,
            Args = ["--no-sandbox", "--disable-gpu"],
        });
        IPage page = await browser.NewPageAsync();
        await page.GotoAsync(url);
        await Assertions.Expect(page.Locator("#model")).ToHaveTextAsync("qwen2");
        await page.FillAsync("#input", "Hello, who are you?");
        await page.ClickAsync("#send");
        await Assertions.Expect(page.Locator(".user")).ToContainTextAsync("Hello, who are you?");
        await Assertions.Expect(page.Locator("#stats")).ToContainTextAsync("tokens/s", new() { Timeout = 30_000 });
        string reply = await page.Locator(".assistant").InnerTextAsync();
        Assert.False(string.IsNullOrWhiteSpace(reply));
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(ModelZoo.TempFolder("page"), "chat.png") });
    }
}
